"""Use cases: drive the domain through ports; no technology imports."""
