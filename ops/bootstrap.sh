#!/usr/bin/env bash
# Install what esflow needs on a fresh machine: system prerequisites (only when missing) and a venv.
# Idempotent and quick when nothing changed: the venv is rebuilt only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
[ -x /usr/lib/postgresql/15/bin/initdb ] || [ -n "${ESFLOW_PG_BIN_DIR:-}" ] || need_apt+=(postgresql-15)
# The console page's browser test drives Debian's chromium (headless); esflow itself never needs it.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "esflow: missing system packages: ${need_apt[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
  echo "installing system packages: ${need_apt[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "esflow: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c 'import esflow' 2>/dev/null; then
  echo "installing esflow into .venv (pip; log in .venv/install.log)" >&2
  "$PYTHON" -m venv .venv
  # The build backend's warnings are noise on every run; show the log only when the install fails.
  if ! { .venv/bin/python -m pip install -q --disable-pip-version-check -U pip &&
         .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'; } >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "esflow: installing the Python dependencies failed (see above)" >&2
    exit 1
  fi
  touch "$stamp"
fi
