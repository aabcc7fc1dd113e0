#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs the system tools the tests use when
# they are missing (Debian; needs root), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian package prometheus (for promtool)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing: install Debian's 'prometheus' package (it ships promtool)" >&2
    exit 1
  fi
fi

cargo test --workspace --locked "$@"
# Helm chart and Grafana dashboards (real Helm engine, Kubernetes schemas, promtool).
bash scripts/test-chart.sh
