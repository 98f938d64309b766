"""Optional integrations. `resnet_det.integrations.detectron2` needs detectron2 (imported on demand);
`d2_config` (our detectron2 config keys, cfg -> ResNet arguments) does not."""
from .d2_config import RESNET_DET_D2_DEFAULTS, add_resnet_det_config, choose_d2_device, d2_resnet_kwargs

__all__ = ["RESNET_DET_D2_DEFAULTS", "add_resnet_det_config", "choose_d2_device", "d2_resnet_kwargs"]
