"""resnet_det: Deep Residual Learning (He et al., 2016) for detection and localization."""
__version__ = "0.1.0"
