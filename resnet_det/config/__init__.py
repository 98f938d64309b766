from .config import ALIASED_KEYS, RENAMED_KEYS, CfgNode, get_cfg
from .validate import validate_cfg

__all__ = ["CfgNode", "get_cfg", "validate_cfg", "RENAMED_KEYS", "ALIASED_KEYS"]
