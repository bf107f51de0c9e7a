// The mail queue worker (a stand-in).
