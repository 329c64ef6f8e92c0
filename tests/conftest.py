"""Shared test configuration: Hypothesis profiles (CI runs more examples, deterministically),
and structlog routed into stdlib logging as in production (so `caplog` sees every event)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from rustynet.adapters.logging import configure_structlog

# A real throwaway PostgreSQL cluster (fixtures postgres_cluster, postgres_dsn) for store tests.
pytest_plugins = ["tests.postgres"]

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Production (`configure_logging`) turns every structlog event into a stdlib record on the
# logger it names, rendered by the one redacting formatter. Tests get the same routing, so a
# test reading `caplog` sees our events; `tests/log_records.py` reads their fields.
configure_structlog()
