from . import hooks
from .defaults import default_argument_parser, default_setup, setup_cfg
from .hooks import HookBase
from .launch import launch
from .predictor import DefaultPredictor
from .trainer import Trainer

__all__ = ["DefaultPredictor", "HookBase", "Trainer", "default_argument_parser", "default_setup", "hooks", "launch",
           "setup_cfg"]
