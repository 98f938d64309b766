"""ImageNet localization (the paper's Appendix C): per-class RPN head on a classification ResNet,
ILSVRC XML / Kaggle CSV readers, and the trainer. Importing registers imagenet_loc_{train,val} and
the generated loc_demo_{train,val} (under the data sets root) unless those names exist already."""
from .data import (load_ilsvrc_localization, read_ilsvrc_xml, read_loc_csv, read_synsets,
                   register_builtin_localization, register_ilsvrc_localization)
from .mapper import LocalizationMapper, scale_and_crop
from .model import Localizer, PerClassRPNHead, build_localizer, cell_anchors, grid_anchors
from .trainer import LocalizerTrainer

register_builtin_localization()

__all__ = ["Localizer", "PerClassRPNHead", "build_localizer", "cell_anchors",
           "grid_anchors", "LocalizationMapper", "scale_and_crop", "LocalizerTrainer",
           "load_ilsvrc_localization", "read_ilsvrc_xml", "read_loc_csv", "read_synsets",
           "register_ilsvrc_localization", "register_builtin_localization"]
