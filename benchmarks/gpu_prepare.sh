#!/usr/bin/env bash
# Run HERE, before the device call (this machine reaches PyPI; the GPU machine reaches nothing): puts
# into .whl/ (git-ignored; name it in the call's `carry`) the packages resnet_det imports that the GPU
# image lacks, as wheels for its python 3.12 on x86-64 (/work/.library/device/KINDS.md lists what the
# image holds: torch, torchvision, numpy, opencv, pyyaml, tqdm, pillow, tabulate, portalocker, pytest,
# onnx, onnxruntime, ... but not fvcore, iopath, yacs, termcolor or pycocotools). About 0.5 MB.
# benchmarks/gpu_check.py installs them there into a temporary folder (pip --no-index --target).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=${WHL_DIR:-.whl}
mkdir -p "$DEST"
# The versions the test suite runs with here; pycocotools is compiled (an abi3 wheel for cp312 and up).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" pycocotools==2.0.11 yacs==0.1.8 termcolor==3.3.0
# fvcore and iopath publish source only: build their (pure Python) wheels here.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" fvcore==0.1.5.post20221221 iopath==0.1.10
ls -l "$DEST"
