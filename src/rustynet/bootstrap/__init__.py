"""The composition root: the only code that names concrete adapters."""
