"""Everything about weights files: reading every accepted format, the name tables, writing, the meta
record, loading into models (the policy), training checkpoints and what `--resume` restores.

    key_map.py       the one ResNet name table torchvision <-> detectron2 <-> MSRA, used both ways
    heads.py         the parts around the ResNet (FPN, RPN, box head, predictor) in resnet_det / detectron2
    layouts.py       where the ResNet sits inside whole detectors; a whole detector's conversion
    meta.py          the meta record (META_KEYS): the input a checkpoint's weights were trained on
    formats.py       reading (.pth/.pkl: ours, torchvision, detectron2, MSRA) and writing weights files
    load.py          MODEL.WEIGHTS into a model: name mapping and the loading policy, with a report
    checkpointer.py  training checkpoints on fvcore's Checkpointer: atomic save, exact resume, RNG state
    conventions.py   the input convention a run adopts from MODEL.WEIGHTS, and keeps under --resume
"""
from .checkpointer import Checkpointer, unwrap_model
from .conventions import (adopt_weight_conventions, check_resumed_conventions, restore_run_conventions,
                          run_conventions, weights_meta)
from .formats import (ACCEPTED_FORMATS, INT8_FORMAT, load_backbone_weights, missing_weights_error, read_checkpoint,
                      save_detectron2_pkl, save_msra_pkl, save_resnet_det)
from .heads import HEAD_TABLE, anchor_order, box_regression_is_agnostic, convert_heads
from .key_map import (BN_EPS, CONVENTIONS, TABLE, ConversionReport, block_mismatch, block_structure,
                      convert_state_dict, format_key, parse_key)
from .layouts import (LAYOUTS, convert_detector, detect_convention, detect_layout, head_framework,
                      join_detector, split_detector)
from .load import load_model_weights, read_weights
from .meta import META_KEYS, check_meta, default_meta, meta_mismatches

__all__ = [
    # key_map: the one name table; heads: the parts around the ResNet; layouts: whole detectors
    "BN_EPS", "CONVENTIONS", "TABLE", "ConversionReport", "block_mismatch", "block_structure",
    "convert_state_dict", "format_key", "parse_key",
    "HEAD_TABLE", "anchor_order", "box_regression_is_agnostic", "convert_heads",
    "LAYOUTS", "convert_detector", "detect_convention", "detect_layout", "head_framework", "join_detector",
    "split_detector",
    # meta: the record; formats: files
    "META_KEYS", "check_meta", "default_meta", "meta_mismatches",
    "ACCEPTED_FORMATS", "INT8_FORMAT", "load_backbone_weights", "missing_weights_error", "read_checkpoint",
    "save_detectron2_pkl", "save_msra_pkl", "save_resnet_det",
    # load: MODEL.WEIGHTS into models
    "load_model_weights", "read_weights",
    # checkpointer: training checkpoints; conventions: what a run adopts and keeps
    "Checkpointer", "unwrap_model",
    "adopt_weight_conventions", "check_resumed_conventions", "restore_run_conventions", "run_conventions",
    "weights_meta",
]
