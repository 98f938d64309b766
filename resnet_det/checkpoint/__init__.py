"""Weight conversion between torchvision, detectron2 and MSRA/Caffe2 names, and checkpoint files."""
from .io import (ACCEPTED_FORMATS, META_KEYS, atomic_write, check_meta, default_meta,
                 load_backbone_weights, meta_mismatches, missing_weights_error, read_checkpoint,
                 save_detectron2_pkl, save_resnet_det)
from .key_map import (BN_EPS, CONVENTIONS, TABLE, ConversionReport, block_structure, convert_state_dict,
                      detect_convention, format_key, parse_key)
from .layouts import LAYOUTS, detect_layout, join_detector, split_detector

__all__ = [k for k in dir() if not k.startswith("_")]
