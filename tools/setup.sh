#!/usr/bin/env bash
# Builds the project environment: Debian packages the tests need (when run as root), then
# .venv from the hash-pinned lock (requirements.lock), then rustynet itself (editable, strict
# mode so the installed package is exactly src/ + adapters/). Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: real PostgreSQL 15 for the store tests; wireguard-go + wireguard-tools: the
# userspace tunnel (no kernel module here); nftables: data-path policy; iputils-ping, iperf3:
# e2e scenarios and benchmarks; nebula: the start-up and idle baseline of bench/bench_node.py.
DEBIAN_PACKAGES=(python3-venv iproute2 postgresql wireguard-go wireguard-tools nftables iputils-ping iperf3 nebula stun-client conntrack)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; echo "setup: failed: $*" >&2; exit 1; }; }
quiet .venv/bin/python -m pip install -q --upgrade pip
quiet .venv/bin/python -m pip install -q --require-hashes -r requirements.lock
# strict editable: the installed package is exactly the listed packages of src/ + adapters/
quiet .venv/bin/python -m pip install -q --no-deps -e . --config-settings editable_mode=strict
.venv/bin/python -c "import rustynet.domain.keys, rustynet.adapters" || { echo "setup: install failed" >&2; exit 1; }
echo "setup: environment ready in .venv"
