// The blog's worker (a stand-in).
