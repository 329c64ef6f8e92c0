"""Pure rules and state machines: no I/O, time and randomness come in as arguments."""
