"""Rules with no I/O of their own: tokens, names, passwords, origins, credentials."""
