"""resnet_det: ResNet backbones (He et al., 2016) for detection and localization."""
from setuptools import find_packages, setup

setup(
    name="resnet_det",
    version="0.1.0",
    description="Deep Residual Learning (He et al., 2016) as a detection/localization toolkit",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    python_requires=">=3.9",
    install_requires=[
        # torch/torchvision: the stack pins 2.14.1 / 0.29.1 (Makefile installs them first);
        # the lower bounds are what the code needs (torchvision.ops.FrozenBatchNorm2d, v2 RPN API).
        "torch>=2.0",
        "torchvision>=0.15",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.7",
        "numpy>=1.23",
        "matplotlib>=3.6",
        "tqdm>=4.60",
        "PyYAML>=6.0",
    ],
    extras_require={
        "dev": ["pytest>=7.0", "pytest-xdist>=3.0", "hypothesis>=6.0", "onnx>=1.14",
                "onnxruntime>=1.16", "tensorboard>=2.10"],
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
)
