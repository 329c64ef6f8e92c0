"""Key stores: OS keyring, encrypted file, in-memory."""
