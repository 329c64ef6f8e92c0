"""Architecture and crypto gates run by `nox -s arch`."""
