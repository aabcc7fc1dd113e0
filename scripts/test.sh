#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs the system tools the tests use when
# they are missing (Debian; needs root), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests drive: prometheus + promtool (Debian prometheus), headless Chromium.
missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian package(s): ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing Debian package(s): ${missing[*]} (install them, or run this as root)" >&2
    exit 1
  fi
fi

# Tests that need those tools are #[ignore]d for a contributor's plain `cargo test`; here they run.
cargo test --workspace --locked --no-fail-fast "$@" -- --include-ignored
# Helm chart and Grafana dashboards (real Helm engine, Kubernetes schemas, promtool).
bash scripts/test-chart.sh
