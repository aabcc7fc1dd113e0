#!/usr/bin/env bash
# Tests of the Helm chart (charts/kubenurse) and the Grafana dashboards (grafana/), in Python:
# rendered and linted by the real Helm engine (PyPI helm-python-sdk), every object validated
# against the Kubernetes schemas (kubernetes-validate), every dashboard query parsed and
# evaluated by promtool. Installs what it needs when missing: Debian's prometheus (promtool)
# and a virtualenv in target/chart-venv (PyPI). After that, everything runs offline.
# Arguments go to pytest (e.g. -k tls, -x).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/chart-venv
requirements=tests/chart/requirements.txt
python=${PYTHON:-python3}

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian package(s) $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "missing: Debian package(s) $* (needs root and apt-get)" >&2
    exit 1
  fi
}

command -v promtool >/dev/null 2>&1 || apt_install prometheus

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"          # Debian's python3 needs python3-venv for ensurepip
    apt_install python3-venv
    "$python" -m venv "$venv"
  fi
fi
if ! cmp -s "$requirements" "$venv/.requirements"; then
  echo "== installing $requirements into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi

export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q tests/chart "$@"
