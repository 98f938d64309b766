from .defaults import default_argument_parser, default_setup, setup_cfg
from .launch import launch
from .predictor import DefaultPredictor
from .trainer import Trainer

__all__ = ["DefaultPredictor", "Trainer", "default_argument_parser", "default_setup", "launch", "setup_cfg"]
