"""resnet_det: ResNet backbones (He et al., 2016) for detection and localization."""
from setuptools import find_packages, setup

setup(
    name="resnet_det",
    version="0.1.0",
    description="Deep Residual Learning (He et al., 2016) as a detection/localization toolkit",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    python_requires=">=3.10",  # zip(..., strict=True) in evaluation/
    install_requires=[
        # The stack pins torch 2.14.1 / torchvision 0.29.1 (the Makefile installs them first). Lower
        # bounds from the public APIs the code calls: torch.onnx.export(dynamo=False) (2.5; export),
        # torch.is_autocast_enabled(device_type) (2.4), torch.compiler.is_compiling and
        # torch.amp.GradScaler("cuda") (2.3); torchvision 0.20 is torch 2.5's release. The private
        # oneDNN/torchvision internals of the fast path are gated at run time by resnet_det/utils/compat.py
        # (checked range 2.5 .. 2.14 / 0.20 .. 0.29; outside it the public ops run, with one log line).
        "torch>=2.5,<3",
        "torchvision>=0.20,<1",
        "fvcore>=0.1.5",
        "tabulate>=0.9",  # ships with fvcore; imported directly (intfmt: 0.9)
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.7",
        "numpy>=1.23",
        "matplotlib>=3.6",
        "tqdm>=4.60",
        "PyYAML>=6.0",
    ],
    extras_require={
        "dev": ["pytest>=7.0", "pytest-xdist>=3.0", "hypothesis>=6.0", "onnx>=1.14",
                "onnxruntime>=1.16", "tensorboard>=2.10", "faster-coco-eval>=1.6"],
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
        # the C++ COCOeval picked by TEST.COCO_EVAL_IMPL auto (same numbers as pycocotools, faster)
        "fast-eval": ["faster-coco-eval>=1.6"],
    },
)
