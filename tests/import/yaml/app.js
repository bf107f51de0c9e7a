// The blog (a stand-in).
