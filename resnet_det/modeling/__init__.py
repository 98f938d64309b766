from .backbone import *  # noqa: F401,F403  (resnet18..152, plain18/34, cifar_resnet, registry, ...)
from .backbone import __all__ as _backbone_all

__all__ = list(_backbone_all)
