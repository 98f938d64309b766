"""The classifier the pretraining tool trains: normalisation + a Table 1 or Sec. 4.2 net.

Its state_dict is the net's under ``net.``: torchvision names once the prefix is stripped (as
``checkpoint.read_checkpoint`` does), so a pretraining checkpoint is a detector's MODEL.WEIGHTS.
The mean/std are non-persistent buffers; a per-pixel mean image travels in the checkpoint's meta.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx.operators import shape_as_tensor

from ..checkpoint import load_model_weights, read_weights
from ..modeling.backbone import build_resnet
from ..modeling.speed import to_channels_last
from ..utils.errors import ConfigError


class Classifier(nn.Module):
    """Images (0-255, INPUT.FORMAT order) -> logits.

    Train mode: ``model((images, labels))`` -> ``{"loss_cls": cross-entropy}``.
    Eval mode: ``model(images)`` with images (N, 3, H, W) -> (N, C) logits; (N, K, 3, H, W) crops ->
    (N, K, C); with ``test_sizes`` (Table 4 protocol) each image is resized to every shorter side in
    it and run fully convolutionally -> (N, len(test_sizes), C). The evaluator averages the softmax
    of the K or len(test_sizes) score vectors.

    Args:
        net: ResNet or CifarResNet with a classifier (fc).
        pixel_mean, pixel_std: 3 values each (0-255 scale).
        mean_image: (3, S, S) per-pixel mean (Sec. 3.4), subtracted from inputs of size S x S; inputs of
            any other size (multi-scale testing) get its per-channel average instead.
    """

    def __init__(self, net: nn.Module, pixel_mean, pixel_std, mean_image: torch.Tensor | None = None,
                 test_sizes=None):
        super().__init__()
        self.net = net
        if mean_image is not None:
            mean_image = torch.as_tensor(mean_image, dtype=torch.float32)
            if mean_image.dim() != 3 or mean_image.shape[0] != 3:
                raise ValueError(f"mean_image must be (3, H, W), got {tuple(mean_image.shape)}")
            pixel_mean = mean_image.mean(dim=(1, 2)).tolist()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("mean_image", mean_image, False)
        self.test_sizes = tuple(int(s) for s in test_sizes) if test_sizes else None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.pixel_mean.device, non_blocking=True).float()
        return (x - self.subtracted_mean(x)) / self.pixel_std

    def subtracted_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean image for inputs of its own size, its per-channel average for any other size."""
        if self.mean_image is None:
            return self.pixel_mean
        if not torch.jit.is_tracing():
            return self.mean_image if tuple(x.shape[-2:]) == tuple(self.mean_image.shape[-2:]) else self.pixel_mean
        # Traced for export (TorchScript, ONNX): a Python size test would freeze the traced size's
        # branch into the graph, so the graph compares sizes itself. Nearest resizing to the mean
        # image's own size is the identity; at other sizes its result is discarded by the where.
        same = (shape_as_tensor(x)[-2:] == shape_as_tensor(self.mean_image)[-2:]).all()
        image = F.interpolate(self.mean_image[None], size=x.shape[-2:], mode="nearest")[0]
        return torch.where(same, image, self.pixel_mean)

    def forward(self, batch):
        if self.training:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError("in train mode the classifier takes (images, labels)")
            images, labels = batch
            logits = self.net(self.normalize(images))
            return {"loss_cls": F.cross_entropy(logits, labels.to(logits.device))}
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if images.dim() == 5:  # multi-crop: (N, K, 3, H, W)
            n, k = images.shape[:2]
            return self.net(self.normalize(images.flatten(0, 1))).view(n, k, -1)
        if self.test_sizes:
            return torch.stack([self.net(self.normalize(resize_shorter_tensor(images, s)))
                                for s in self.test_sizes], dim=1)
        return self.net(self.normalize(images))


def resize_shorter_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> shorter side `size`, aspect kept (antialiased bilinear). The global average
    pool makes the net fully convolutional: its logits equal the fc applied at every position of
    the last feature map and averaged, which is the paper's dense multi-scale testing (Sec. 3.4)."""
    h, w = images.shape[-2:]
    if min(h, w) == size:
        return images
    scale = size / min(h, w)
    out = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images.float(), size=out, mode="bilinear", align_corners=False, antialias=True)


def build_net(cfg) -> nn.Module:
    """ResNet (MODEL.CLASSIFIER.STYLE "imagenet", Table 1) or CifarResNet ("cifar", Sec. 4.2), from the
    one config translation (modeling.backbone.build_resnet)."""
    r, c = cfg.MODEL.RESNETS, cfg.MODEL.CLASSIFIER
    if r.NORM == "FrozenBN":
        raise ConfigError("MODEL.RESNETS.NORM=FrozenBN cannot be trained from scratch: classification "
                          "pretraining learns the BN statistics; set MODEL.RESNETS.NORM BN (or SyncBN)")
    if c.NUM_CLASSES < 2:
        raise ConfigError(f"MODEL.CLASSIFIER.NUM_CLASSES={c.NUM_CLASSES}: expected at least 2")
    return build_resnet(cfg, classifier=True)


def build_classifier(cfg, mean_image=None) -> Classifier:
    """Classifier from the config. INPUT.MEAN_MODE "per_pixel" needs ``mean_image`` (see
    ``data.compute_mean_image``); "per_channel" uses MODEL.PIXEL_MEAN."""
    if cfg.MODEL.META_ARCHITECTURE != "Classifier":
        raise ConfigError(f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: the pretraining tool "
                          "trains 'Classifier' (see configs/imagenet, configs/cifar10)")
    if cfg.INPUT.MEAN_MODE == "per_pixel" and mean_image is None:
        raise ValueError("INPUT.MEAN_MODE=per_pixel needs the mean image of the training set "
                         "(resnet_det.classification.compute_mean_image(cfg))")
    if cfg.INPUT.MEAN_MODE != "per_pixel":
        mean_image = None
    protocol = cfg.TEST.CLS_PROTOCOL
    model = Classifier(build_net(cfg), list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD), mean_image,
                       test_sizes=cfg.TEST.MULTISCALE_SIZES if protocol == "multiscale" else None)
    return to_channels_last(model) if cfg.MODEL.CHANNELS_LAST else model


def load_classifier_weights(model: Classifier, path: str, require_all: bool = False, use_ema: bool = False) -> dict:
    """Initialise the classifier from MODEL.WEIGHTS through the package's loader and policy
    (checkpoint.load_model_weights: any naming, an fc of another NUM_CLASSES keeps its initialisation);
    a recorded per-pixel mean image replaces the model's. Returns the report.

    ``require_all``: the file must hold exactly this net (every tensor loads, none left over, as
    export needs: a deployed model with random layers, or one missing trained blocks, is wrong).
    ``use_ema``: a training checkpoint's weights EMA (MODEL_EMA) where it holds one."""
    report = load_model_weights(model, path, require_all=require_all, use_ema=use_ema)
    _, meta = read_weights(path)
    if isinstance(meta.get("mean_image"), torch.Tensor) and model.mean_image is not None:
        model.mean_image = meta["mean_image"].to(model.pixel_mean)
        model.pixel_mean = model.mean_image.mean(dim=(1, 2)).view(3, 1, 1)
    return report
