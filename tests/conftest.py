"""Shared test configuration: Hypothesis profiles (CI runs more examples, deterministically)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
