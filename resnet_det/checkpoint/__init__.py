"""Weight conversion between torchvision, detectron2 and MSRA/Caffe2 names, and checkpoint files."""
from .io import (ACCEPTED_FORMATS, META_KEYS, check_meta, default_meta, load_backbone_weights, meta_mismatches,
                 missing_weights_error, read_checkpoint, save_detectron2_pkl, save_msra_pkl, save_resnet_det)
from .key_map import (BN_EPS, CONVENTIONS, TABLE, ConversionReport, block_structure, convert_state_dict,
                      detect_convention, format_key, parse_key)
from .heads import HEAD_TABLE, anchor_order, convert_heads
from .layouts import LAYOUTS, convert_detector, detect_layout, head_framework, join_detector, split_detector

__all__ = [
    # key_map: the one name table
    "BN_EPS", "CONVENTIONS", "TABLE", "ConversionReport", "block_structure", "convert_state_dict",
    "detect_convention", "format_key", "parse_key",
    # layouts: backbone weights inside whole detectors; heads: the parts around the ResNet
    "LAYOUTS", "convert_detector", "detect_layout", "head_framework", "join_detector", "split_detector",
    "HEAD_TABLE", "anchor_order", "convert_heads",
    # io: files and the meta record
    "ACCEPTED_FORMATS", "META_KEYS", "check_meta", "default_meta", "load_backbone_weights",
    "meta_mismatches", "missing_weights_error", "read_checkpoint", "save_detectron2_pkl", "save_msra_pkl", "save_resnet_det",
]
