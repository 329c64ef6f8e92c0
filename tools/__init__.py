"""Development tools: quality gates and release helpers (not shipped in the package)."""
