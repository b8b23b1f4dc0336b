#!/usr/bin/env bash
# Wheels for a GPU machine that has PyTorch but no package index (an air-gapped cluster node):
# downloads the pure-Python packages tptlib needs beyond a usual PyTorch image (open_clip_torch and
# its text-cleaning dependencies) into .whl/ (ignored by git). On the other machine, from a copy of
# this repository that includes .whl/:
#
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD          # tptlib itself runs from the checkout
#   PYTHON=python3 bash scripts/bench_gpu.sh
#
# The versions are the ones this project is tested with. timm, pandas, safetensors, regex, tqdm,
# huggingface_hub, torchvision and pillow are expected on that machine (`python3 -m pip show NAME`).
set -euo pipefail

cd "$(dirname "$0")/.."
PIP="${PIP:-python3 -m pip}"
$PIP download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
  --platform manylinux2014_x86_64 --platform any -d .whl \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
ls -l .whl
