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
    "MODEL.RPN.LOSS_NORMALIZER": ("sampled", "batch_size"),
    "MODEL.RPN.BBOX_REG_LOSS_TYPE": ("smooth_l1", "giou", "diou", "ciou"),
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": ("smooth_l1", "giou", "diou", "ciou"),
    "INPUT.RESIZE_ROUNDING": ("floor", "round"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": ("choice", "range"),
    "MODEL.CLASSIFIER.STYLE": ("imagenet", "cifar"),
    "INPUT.FORMAT": ("BGR", "RGB"),
    "INPUT.MEAN_MODE": ("per_channel", "per_pixel"),
    "DATALOADER.ON_BAD_IMAGE": ("error", "skip"),
    "DATALOADER.SAMPLER_TRAIN": ("TrainingSampler", "RepeatFactorTrainingSampler"),
    "SOLVER.OPTIMIZER": ("SGD", "AdamW"),
    "SOLVER.LR_SCHEDULER_NAME": ("WarmupMultiStepLR", "WarmupCosineLR"),
    "SOLVER.WARMUP_METHOD": ("linear", "constant"),
    "SOLVER.ON_NONFINITE": ("stop", "skip"),
    "SOLVER.AMP.DTYPE": ("bfloat16", "float16"),
    "TEST.CLS_PROTOCOL": ("center", "10crop", "multiscale"),
    "TEST.COCO_EVAL_IMPL": ("auto", "pycocotools", "faster_coco_eval"),
    "TEST.PRECISION": ("fp32", "bf16", "int8"),
}
_STAGES = ("stem", "res2", "res3", "res4", "res5")
# INPUT.AUGMENTATIONS names; each is built in data/augment.py.
AUGMENTATIONS = ("RandomFlip", "RandomCrop", "LargeScaleJitter", "RandomIoUCrop", "PhotometricDistort")
CROP_TYPES = ("relative", "relative_range", "absolute", "absolute_range")  # detectron2's INPUT.CROP.TYPE


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
    if cfg.TEST.IMS_PER_BATCH < 1:
        _fail("TEST.IMS_PER_BATCH", cfg.TEST.IMS_PER_BATCH, "at least 1")
    if cfg.SOLVER.BASE_LR <= 0:
        _fail("SOLVER.BASE_LR", cfg.SOLVER.BASE_LR, "a positive learning rate")
    if list(cfg.SOLVER.STEPS) != sorted(cfg.SOLVER.STEPS):
        _fail("SOLVER.STEPS", cfg.SOLVER.STEPS, "increasing iterations")
    if not 0 <= cfg.DATALOADER.REPEAT_THRESHOLD <= 1:
        _fail("DATALOADER.REPEAT_THRESHOLD", cfg.DATALOADER.REPEAT_THRESHOLD, "a fraction of images in [0, 1]")
    if cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP < 0:
        _fail("SOLVER.CHECKPOINT_MAX_TO_KEEP", cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP, "0 (keep all) or a positive count")
    if not 0 <= cfg.MODEL_EMA.DECAY <= 1:
        _fail("MODEL_EMA.DECAY", cfg.MODEL_EMA.DECAY, "a decay in [0, 1], e.g. 0.999")
    if not 0 <= cfg.INPUT.RANDOM_FLIP_PROB <= 1:
        _fail("INPUT.RANDOM_FLIP_PROB", cfg.INPUT.RANDOM_FLIP_PROB, "a probability in [0, 1]")
    if min(cfg.INPUT.MIN_SIZE_TRAIN) <= 0 or cfg.INPUT.MIN_SIZE_TEST <= 0:
        _fail("INPUT.MIN_SIZE_TRAIN/TEST", (cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST), "positive sizes")
    for key in ("MODEL.RPN.SMOOTH_L1_BETA", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "MODEL.RPN.LOSS_WEIGHT",
                "MODEL.RPN.BBOX_REG_LOSS_WEIGHT", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT"):
        if _get(cfg, key) < 0:
            _fail(key, _get(cfg, key), "a value >= 0")
    aug = cfg.TEST.AUG
    if not aug.MIN_SIZES or min(aug.MIN_SIZES) <= 0:
        _fail("TEST.AUG.MIN_SIZES", aug.MIN_SIZES, "one or more positive shorter-side sizes, e.g. (400, 600, 800)")
    if aug.MAX_SIZE < max(aug.MIN_SIZES):
        _fail("TEST.AUG.MAX_SIZE", aug.MAX_SIZE, f"at least the largest TEST.AUG.MIN_SIZES ({max(aug.MIN_SIZES)})")
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and (
            len(cfg.INPUT.MIN_SIZE_TRAIN) != 2 or cfg.INPUT.MIN_SIZE_TRAIN[0] > cfg.INPUT.MIN_SIZE_TRAIN[1]):
        _fail("INPUT.MIN_SIZE_TRAIN", tuple(cfg.INPUT.MIN_SIZE_TRAIN),
              "two sizes (min, max) with INPUT.MIN_SIZE_TRAIN_SAMPLING range, e.g. (640, 800)")
    check_augmentations(cfg)
    lo, hi = cfg.MODEL.RPN.IOU_THRESHOLDS
    if not 0 <= lo <= hi <= 1:
        _fail("MODEL.RPN.IOU_THRESHOLDS", cfg.MODEL.RPN.IOU_THRESHOLDS, "[low, high] with 0 <= low <= high <= 1")

    _check_mode_keys(cfg)


def _check_mode_keys(cfg) -> None:
    """Keys that cannot act in the mode the config selects are refused there, not silently ignored."""
    if cfg.MODEL.RPN.POSTPROCESS == "detectron2" and cfg.MODEL.RPN.SCORE_THRESH != 0:
        raise ConfigError(f"MODEL.RPN.SCORE_THRESH={cfg.MODEL.RPN.SCORE_THRESH!r} has no effect under "
                          "MODEL.RPN.POSTPROCESS detectron2 (detectron2 selects proposals by top-k and NMS only); "
                          "set MODEL.RPN.SCORE_THRESH 0.0, or MODEL.RPN.POSTPROCESS torchvision for torchvision's "
                          "proposal score threshold")
    if cfg.MODEL.ROI_BOX_HEAD.NAME == "Res5ROIHead" and cfg.MODEL.RESNETS.RES5_DILATION != 1:
        raise ConfigError(f"MODEL.RESNETS.RES5_DILATION={cfg.MODEL.RESNETS.RES5_DILATION!r} with MODEL.ROI_BOX_HEAD.NAME "
                          "Res5ROIHead (C4): res5 is the per-region box head there, which detectron2 builds "
                          "without dilation (it ignores the key for that head); set MODEL.RESNETS.RES5_DILATION 1, "
                          "or use dilation with a backbone that runs res5 (FPN)")


def check_augmentations(cfg) -> None:
    """ConfigError naming the first INPUT.AUGMENTATIONS / CROP / LSJ / IOU_CROP / PHOTOMETRIC value that cannot work."""
    i = cfg.INPUT
    names = list(i.AUGMENTATIONS)
    for n in names:
        if n not in AUGMENTATIONS:
            raise ConfigError(f"INPUT.AUGMENTATIONS contains {n!r}: expected names from {', '.join(AUGMENTATIONS)}, "
                              "e.g. INPUT.AUGMENTATIONS \"('RandomFlip', 'PhotometricDistort')\"")
    if len(set(names)) != len(names):
        raise ConfigError(f"INPUT.AUGMENTATIONS={tuple(names)}: a name is listed twice; list each at most once")
    if "LargeScaleJitter" in names:
        late = [n for n in names[names.index("LargeScaleJitter"):] if n in ("RandomCrop", "RandomIoUCrop")]
        if late or (i.CROP.ENABLED and "RandomCrop" not in names):
            late = late or ["RandomCrop (INPUT.CROP.ENABLED)"]
            raise ConfigError(f"INPUT.AUGMENTATIONS={tuple(names)}: {', '.join(late)} after LargeScaleJitter would "
                              "undo its fixed image size (the model does not resize LSJ images); list crops "
                              "before LargeScaleJitter")
    c = i.CROP
    if c.TYPE not in CROP_TYPES:
        raise ConfigError(f"INPUT.CROP.TYPE={c.TYPE!r}: expected one of {', '.join(CROP_TYPES)}")
    size = tuple(c.SIZE)
    if len(size) != 2:
        raise ConfigError(f"INPUT.CROP.SIZE={size}: expected two numbers (height, width) or (min, max)")
    if c.TYPE.startswith("relative") and not all(0 < s <= 1 for s in size):
        raise ConfigError(f"INPUT.CROP.SIZE={size}: INPUT.CROP.TYPE {c.TYPE} takes fractions of the image in (0, 1]")
    if c.TYPE.startswith("absolute") and not all(s >= 1 and float(s).is_integer() for s in size):
        raise ConfigError(f"INPUT.CROP.SIZE={size}: INPUT.CROP.TYPE {c.TYPE} takes whole pixel sizes >= 1")
    if c.TYPE == "absolute_range" and size[0] > size[1]:
        raise ConfigError(f"INPUT.CROP.SIZE={size}: absolute_range takes (min, max) with min <= max")
    lo, hi = i.LSJ.SCALE_RANGE
    if not 0 < lo <= hi:
        raise ConfigError(f"INPUT.LSJ.SCALE_RANGE={tuple(i.LSJ.SCALE_RANGE)}: expected (low, high) with 0 < low <= high")
    if i.LSJ.IMAGE_SIZE < 1:
        raise ConfigError(f"INPUT.LSJ.IMAGE_SIZE={i.LSJ.IMAGE_SIZE}: expected a positive size in pixels")
    if not 0 < i.IOU_CROP.MIN_SCALE <= 1:
        raise ConfigError(f"INPUT.IOU_CROP.MIN_SCALE={i.IOU_CROP.MIN_SCALE}: expected a fraction in (0, 1]")
    if not i.IOU_CROP.SAMPLER_OPTIONS or not all(0 <= o for o in i.IOU_CROP.SAMPLER_OPTIONS):
        raise ConfigError(f"INPUT.IOU_CROP.SAMPLER_OPTIONS={tuple(i.IOU_CROP.SAMPLER_OPTIONS)}: expected minimum "
                          "IoUs >= 0 (a value >= 1 means 'leave the image as it is'), at least one")
    p = i.PHOTOMETRIC
    for key in ("BRIGHTNESS", "CONTRAST", "SATURATION"):
        r = tuple(p[key])
        if len(r) != 2 or not 0 <= r[0] <= r[1]:
            raise ConfigError(f"INPUT.PHOTOMETRIC.{key}={r}: expected a factor range (low, high) with 0 <= low <= high")
    if len(p.HUE) != 2 or not -0.5 <= p.HUE[0] <= p.HUE[1] <= 0.5:
        raise ConfigError(f"INPUT.PHOTOMETRIC.HUE={tuple(p.HUE)}: expected (low, high) with -0.5 <= low <= high <= 0.5")
    if not 0 <= p.PROB <= 1:
        raise ConfigError(f"INPUT.PHOTOMETRIC.PROB={p.PROB}: expected a probability in [0, 1]")
