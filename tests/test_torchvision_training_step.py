"""The torchvision-equivalent FPN config trains as torchvision's fasterrcnn_resnet50_fpn does, step for step.

configs/Base-RCNN-FPN.yaml keeps torchvision's training losses (MODEL.RPN.LOSS_NORMALIZER "sampled",
smooth L1 beta 1/9: the defaults; configs/detectron2_zoo/ switch them to detectron2's). The oracle is
torchvision's model as its pretrained recipe builds it: FrozenBN, 3 trainable stages
(trainable_backbone_layers=3 = our FREEZE_AT 2). With weights=None torchvision would fall back to
BatchNorm and 5 trainable stages, so the same model is assembled from its public parts
(resnet_fpn_backbone + FasterRCNN, what fasterrcnn_resnet50_fpn does inside) and checked to have its
parameters. Same random weights, same batch, same seed for the random sampling; our config runs its fast
path (channels-last, BN folding, the gather RoIAlign). Losses and every gradient norm must agree.
"""
import os

import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from resnet_det.config import get_cfg
from resnet_det.modeling.detector import build_model
from resnet_det.utils.benchmark import pretrained_like_norms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# torchvision's loss names are ours.
LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
LOSS_RTOL, GRAD_RTOL = 1e-4, 2e-3


def torchvision_fpn(**kwargs) -> FasterRCNN:
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    return FasterRCNN(backbone, num_classes=91, **kwargs)


def batch(g: torch.Generator) -> list[dict]:
    return [
        {"image": torch.rand(3, 150, 200, generator=g),
         "boxes": torch.tensor([[20.0, 30.0, 110.0, 120.0], [60.0, 10.0, 190.0, 70.0], [5.0, 90.0, 50.0, 145.0]]),
         "labels": torch.tensor([1, 18, 62])},
        {"image": torch.rand(3, 170, 140, generator=g),
         "boxes": torch.tensor([[10.0, 10.0, 130.0, 160.0], [70.0, 40.0, 100.0, 80.0]]),
         "labels": torch.tensor([3, 44])},
    ]


def step(model, images, targets, seed: int):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # torchvision's samplers draw with torch's global generator
    losses = model(images) if targets is None else model(images, targets)
    sum(losses.values()).backward()
    grads = {k: p.grad.norm().item() for k, p in model.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in losses.items()}, grads


def test_fpn_config_training_step_equals_torchvisions():
    torch.manual_seed(0)
    size = dict(min_size=160, max_size=256)
    tv = torchvision_fpn(**size)
    ref_model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                     num_classes=91)
    assert {k: v.shape for k, v in tv.state_dict().items()} == \
        {k: v.shape for k, v in ref_model.state_dict().items() if "num_batches_tracked" not in k}
    pretrained_like_norms(tv)  # ImageNet-like FrozenBN statistics instead of the identity
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", 90, "INPUT.MIN_SIZE_TRAIN", (160,),
                         "INPUT.MAX_SIZE_TRAIN", 256])
    assert cfg.MODEL.CHANNELS_LAST and cfg.MODEL.FUSE_CONV_BN_RELU and cfg.MODEL.ROI_BOX_HEAD.POOLER_IMPL == "gather"
    ours = build_model(cfg)
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.train()
    ours.train()

    trainable_tv = {k for k, p in tv.named_parameters() if p.requires_grad}
    assert trainable_tv == {k for k, p in ours.named_parameters() if p.requires_grad}
    assert not any(k.startswith(("backbone.body.conv1", "backbone.body.layer1")) for k in trainable_tv)
    assert any(k.startswith("backbone.body.layer2") for k in trainable_tv)

    data = batch(torch.Generator().manual_seed(1))
    ref_losses, ref_grads = step(tv, [d["image"] for d in data],
                                 [{"boxes": d["boxes"], "labels": d["labels"]} for d in data], seed=3)
    our_losses, our_grads = step(ours, [{"image": d["image"] * 255, "boxes": d["boxes"], "classes": d["labels"] - 1}
                                        for d in data], None, seed=3)
    print(f"\ntorchvision {ref_losses}\nours        {our_losses}")
    assert set(our_losses) == set(LOSSES) == set(ref_losses)
    for k in LOSSES:
        assert abs(our_losses[k] - ref_losses[k]) <= LOSS_RTOL * abs(ref_losses[k]) + 1e-7, k
    assert set(our_grads) == set(ref_grads) == trainable_tv
    rel = {k: abs(our_grads[k] - ref_grads[k]) / max(ref_grads[k], 1e-12) for k in ref_grads}
    worst = max(rel, key=rel.get)
    print(f"{len(rel)} gradient norms, worst relative difference {rel[worst]:.2e} ({worst})")
    assert rel[worst] <= GRAD_RTOL, (worst, our_grads[worst], ref_grads[worst])
