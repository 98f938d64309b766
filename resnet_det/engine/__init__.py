from .checkpoint import Checkpointer, adopt_weight_conventions, atomic_save, load_model_weights
from .defaults import default_argument_parser, default_setup, setup_cfg
from .launch import launch
from .predictor import DefaultPredictor
from .trainer import Trainer

__all__ = ["Checkpointer", "DefaultPredictor", "Trainer", "adopt_weight_conventions", "atomic_save",
           "default_argument_parser", "default_setup", "launch", "load_model_weights", "setup_cfg"]
