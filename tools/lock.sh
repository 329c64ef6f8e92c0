#!/usr/bin/env bash
# Regenerates requirements.lock (hash-pinned runtime + dev dependencies) from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
  --quiet -o requirements.lock
