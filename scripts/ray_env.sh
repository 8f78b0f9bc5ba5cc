#!/usr/bin/env bash
# Create or update .venv-ray: dkbench (editable, from this checkout's pyproject.toml) + the `ray` extra
# (hydra-ray-launcher → ray[default]), for `dkbench sweep … hydra/launcher=ray_local` (tests/cluster/test_ray.py).
#
#   bash scripts/ray_env.sh            # idempotent: does nothing when pyproject.toml and this script are unchanged
#   RAY_VENV=/path/to/env bash scripts/ray_env.sh
#
# Why a separate environment (measured with `.venv/bin/pip install --dry-run "hydra-ray-launcher==1.2.2"`):
#   hydra-ray-launcher 1.2.2 requires `cloudpickle<3` and pulls ray[default] 2.60.0 and boto3 1.44.8, so pip would
#   - downgrade cloudpickle 3.1.3 → 2.2.1, below what the default env's joblib 1.6.0 requires (cloudpickle>=3.0;
#     joblib 1.6 no longer vendors it): `pip check` fails, and every later `pip install -e ".[dev]"` (make install)
#     resolves joblib's requirement against the launcher's pin again. (Measured: a joblib smoke sweep still ran
#     with cloudpickle 2.2.1 put in front of .venv, so the break is the declared requirement, not a crash seen.)
#   - downgrade python-dateutil 4.0.0 → 2.9.0.post0 (botocore 1.44.8 requires python-dateutil<3; pandas and
#     matplotlib accept either);
#   - add ~30 packages (ray 2.60.0 is 240 MB installed, grpcio, boto3/botocore, opencensus, google-auth, py-spy…).
#   In a fresh environment pip resolves `.[ray]` consistently (joblib 1.5.3, which vendors its own cloudpickle;
#   `pip check` is run below), so the Ray stack lives here (≈ 2.0 GB, 57 s with no pip cache) and .venv stays.
# What is not installed: the `dev` extra (pytest runs from .venv and starts this env's python as a subprocess) and
# medmnist (only the default env's evaluator tests use it).
set -euo pipefail

SELF=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.."
VENV=${RAY_VENV:-.venv-ray}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.installed"
# The env is up to date when it was built from this pyproject.toml by this script.
WANT=$(cat pyproject.toml "$SELF" | sha256sum | cut -d' ' -f1)

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "ray_env: $VENV is up to date (pyproject.toml unchanged); nothing to do"
  exit 0
fi

start=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
before=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | sort || true)
"$VENV/bin/python" -m pip install --upgrade --quiet pip
"$VENV/bin/python" -m pip install --quiet -e ".[ray]"
# This environment sets PYTHONDONTWRITEBYTECODE=1: without cached bytecode every import of the stack (and every Ray
# worker's) costs twice as long.
"$VENV/bin/python" -m compileall -q "$VENV/lib" > /dev/null 2>&1 || true
"$VENV/bin/python" -m pip check
after=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | sort)

echo "ray_env: installed or changed in $VENV (took $(( $(date +%s) - start )) s):"
changed=$(comm -13 <(echo "$before") <(echo "$after"))
if [[ -n "$changed" ]]; then echo "$changed" | sed 's/^/  /'; else echo "  (nothing: every requirement was already met)"; fi
echo "ray_env: key versions:"
echo "$after" | grep -i -E '^(ray|hydra-ray-launcher|hydra-core|cloudpickle|joblib|python-dateutil|torch|dkbench)[=@ ]' \
  | sed 's/^/  /'
echo "$WANT" > "$STAMP"
