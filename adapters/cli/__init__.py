"""Command-line driving adapters: argument parsing, output, exit codes."""
