// The chat server (a stand-in).
