"""Adapters: everything that touches the world. Each module confines one library."""
