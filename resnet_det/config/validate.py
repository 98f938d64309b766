"""Value checks: an impossible value names the key, the value and the choices."""
from __future__ import annotations

from ..utils.errors import ConfigError

_CHOICES = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedRCNN", "Classifier", "Localizer"),
    "MODEL.RESNETS.DEPTH": (18, 34, 50, 101, 152),
    "MODEL.RESNETS.NORM": ("BN", "FrozenBN", "GN", "SyncBN"),
    "MODEL.RESNETS.SHORTCUT": ("A", "B", "C"),
    "MODEL.RESNETS.RES5_DILATION": (1, 2),
    "MODEL.BACKBONE.FREEZE_AT": (0, 1, 2, 3, 4, 5),
    "MODEL.ROI_BOX_HEAD.NAME": ("Res5ROIHead", "FastRCNNConvFCHead"),
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": ("ROIAlign", "ROIAlignV2", "ROIPool"),
    "MODEL.ROI_BOX_HEAD.POOLER_IMPL": ("gather", "torchvision"),
    # torchvision's or detectron2's semantics (modeling/detector/detectron2_style.py)
    "MODEL.ROI_BOX_HEAD.POOLER_LEVEL_MAPPING": ("torchvision", "detectron2"),
    "MODEL.ANCHOR_GENERATOR.STYLE": ("torchvision", "detectron2"),
    "MODEL.RPN.POSTPROCESS": ("torchvision", "detectron2"),
    "MODEL.ROI_HEADS.POSTPROCESS": ("torchvision", "detectron2"),
    "INPUT.RESIZE_ROUNDING": ("floor", "round"),
    "MODEL.CLASSIFIER.STYLE": ("imagenet", "cifar"),
    "INPUT.FORMAT": ("BGR", "RGB"),
    "INPUT.MEAN_MODE": ("per_channel", "per_pixel"),
    "DATALOADER.ON_BAD_IMAGE": ("error", "skip"),
    "SOLVER.OPTIMIZER": ("SGD", "AdamW"),
    "SOLVER.LR_SCHEDULER_NAME": ("WarmupMultiStepLR", "WarmupCosineLR"),
    "SOLVER.WARMUP_METHOD": ("linear", "constant"),
    "SOLVER.ON_NONFINITE": ("stop", "skip"),
    "SOLVER.AMP.DTYPE": ("bfloat16", "float16"),
    "TEST.CLS_PROTOCOL": ("center", "10crop", "multiscale"),
    "TEST.PRECISION": ("fp32", "bf16", "int8"),
}
_STAGES = ("stem", "res2", "res3", "res4", "res5")


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _fail(key, value, expected):
    raise ConfigError(f"{key}={value!r}: expected {expected}")


def validate_cfg(cfg) -> None:
    """Raise ConfigError (a ValueError) naming the first key whose value cannot work."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            _fail(key, value, "one of " + ", ".join(map(str, choices)))
    for feat in cfg.MODEL.RESNETS.OUT_FEATURES:
        if feat not in _STAGES:
            _fail("MODEL.RESNETS.OUT_FEATURES", feat, "names from " + ", ".join(_STAGES))
    if len(cfg.MODEL.PIXEL_MEAN) != len(cfg.MODEL.PIXEL_STD):
        _fail("MODEL.PIXEL_STD", cfg.MODEL.PIXEL_STD, f"{len(cfg.MODEL.PIXEL_MEAN)} values, like PIXEL_MEAN")
    if any(s <= 0 for s in cfg.MODEL.PIXEL_STD):
        _fail("MODEL.PIXEL_STD", cfg.MODEL.PIXEL_STD, "positive values")
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES < 1:
        _fail("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES, "at least 1")
    if cfg.TEST.PRECISION_CALIB_IMAGES < 1:
        _fail("TEST.PRECISION_CALIB_IMAGES", cfg.TEST.PRECISION_CALIB_IMAGES, "at least 1 calibration image")
    if cfg.TEST.PRECISION == "int8" and cfg.MODEL.DEVICE.startswith("cuda"):
        _fail("TEST.PRECISION", "int8", "fp32 or bf16 on a GPU (int8 runs on the CPU: MODEL.DEVICE cpu)")
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        _fail("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH, "at least 1")
    if cfg.SOLVER.BASE_LR <= 0:
        _fail("SOLVER.BASE_LR", cfg.SOLVER.BASE_LR, "a positive learning rate")
    if list(cfg.SOLVER.STEPS) != sorted(cfg.SOLVER.STEPS):
        _fail("SOLVER.STEPS", cfg.SOLVER.STEPS, "increasing iterations")
    if not 0 <= cfg.INPUT.RANDOM_FLIP_PROB <= 1:
        _fail("INPUT.RANDOM_FLIP_PROB", cfg.INPUT.RANDOM_FLIP_PROB, "a probability in [0, 1]")
    if min(cfg.INPUT.MIN_SIZE_TRAIN) <= 0 or cfg.INPUT.MIN_SIZE_TEST <= 0:
        _fail("INPUT.MIN_SIZE_TRAIN/TEST", (cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST), "positive sizes")
    lo, hi = cfg.MODEL.RPN.IOU_THRESHOLDS
    if not 0 <= lo <= hi <= 1:
        _fail("MODEL.RPN.IOU_THRESHOLDS", cfg.MODEL.RPN.IOU_THRESHOLDS, "[low, high] with 0 <= low <= high <= 1")
