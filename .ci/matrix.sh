#!/usr/bin/env bash
# Version matrix, oldest end: the framework tests on the oldest Django, Flask,
# Starlette and FastAPI the package supports (the newest end is the main run).
# Run from anywhere; creates .venv-oldest at the repo root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# The lower bounds of pyproject.toml, as release series.
OLDEST=(
    "django==4.2.*"
    "flask==3.0.*"
    "werkzeug==3.0.*"
    "starlette==0.40.*"
    "fastapi==0.115.*"
    "anyio==4.6.*"  # of the same season: newer anyio deprecates names old Starlette uses
)

echo "== matrix: oldest supported frameworks"
python3 -m venv .venv-oldest
.venv-oldest/bin/python -m pip install -q --upgrade pip
.venv-oldest/bin/python -m pip install -q -e '.[test]' "${OLDEST[@]}"
.venv-oldest/bin/python - <<'PY'
from importlib.metadata import version
print("   ", ", ".join(f"{name} {version(name)}" for name in
      ("django", "flask", "werkzeug", "starlette", "fastapi", "anyio", "asgiref")))
PY
.venv-oldest/bin/python -m pytest -q -p no:cacheprovider --no-cov \
    tests/test_django.py tests/test_flask_ext.py tests/test_fastapi_contrib.py \
    tests/test_flask.py tests/test_starlette.py tests/e2e/test_remote_user.py
