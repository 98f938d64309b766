"""The ImageNet ResNets of Table 1, their plain baselines, and their backbone view."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .backbone import Backbone, ShapeSpec
from .blocks import NORMS, SHORTCUTS, get_norm, init_weights, make_stage

# Table 1: block type and number of blocks in conv2_x..conv5_x; every depth is read from here.
ARCHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)  # 3x3 width per stage; a bottleneck outputs 4x this (Fig. 5)
STAGE_NAMES = ("stem", "res2", "res3", "res4", "res5")  # = conv1, conv2_x .. conv5_x
EXPANSION = {"basic": 1, "bottleneck": 4}


def freeze_at_from(*, trainable_layers: int | None = None, frozen_stages: int | None = None) -> int:
    """Translate torchvision's `trainable_layers` or mmdet's `frozen_stages` into our `freeze_at`."""
    if (trainable_layers is None) == (frozen_stages is None):
        raise ValueError("give exactly one of trainable_layers (torchvision) or frozen_stages (mmdet)")
    if trainable_layers is not None:
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers={trainable_layers}: expected 0..5")
        return 5 - trainable_layers
    if not -1 <= frozen_stages <= 4:
        raise ValueError(f"frozen_stages={frozen_stages}: expected -1..4")
    return frozen_stages + 1


def build_stage(index: int, *, block: str, num_blocks: int, norm: str, shortcut: str, plain: bool,
                stride_in_1x1: bool, num_groups: int, width_per_group: int, res5_dilation: int,
                stem_out_channels: int, res2_out_channels: int) -> nn.Sequential:
    """Stage `index` (1 = conv2_x/res2 .. 4 = conv5_x/res5) as Table 1 sizes it.

    Widths double per stage from res2's; the backbone and the C4 res5 head both call this.
    """
    res2_out = res2_out_channels or STAGE_WIDTHS[0] * EXPANSION[block]
    in_ch = stem_out_channels if index == 1 else res2_out * 2 ** (index - 2)
    out_ch = res2_out * 2 ** (index - 1)
    # Downsampling by stride 2 in conv3_1, conv4_1, conv5_1 (res5 keeps stride 16 when dilated).
    dilation = res5_dilation if index == 4 else 1
    first_stride = 1 if index == 1 or dilation > 1 else 2
    kwargs = dict(norm=norm, shortcut=shortcut, plain=plain, dilation=dilation)
    if block == "bottleneck":
        width = num_groups * width_per_group * 2 ** (index - 1)
        kwargs.update(bottleneck_channels=width, stride_in_1x1=stride_in_1x1, groups=num_groups)
    return make_stage(block, num_blocks, in_ch, out_ch, first_stride, **kwargs)


def check_depth(depth: int) -> tuple[str, tuple[int, ...]]:
    if depth not in ARCHS:
        raise ValueError(f"depth={depth!r}: expected one of {', '.join(map(str, ARCHS))} (Table 1)")
    return ARCHS[depth]


class ResNet(nn.Module):
    """Table 1's network; `num_classes=None` drops avgpool+fc, leaving a feature extractor.

    Parameter names equal torchvision's (`conv1`, `bn1`, `layer1..4`, `fc`), so
    `ResNet(50).load_state_dict(torchvision.models.resnet50().state_dict())` works strictly.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_classes: classifier outputs, or None for no classifier.
        out_features: stage names `forward_features` returns; stages after the last are not built.
        norm: "BN", "FrozenBN", "GN" or "SyncBN".
        stride_in_1x1: paper/MSRA stride placement (True) or torchvision's (False).
        shortcut: Table 3 option "A", "B" or "C". plain: no shortcuts (Sec. 4.1 baselines).
        zero_init_residual: start each residual branch's last norm at zero.
        freeze_at: freeze this many stages from the bottom (1 = stem); their BN becomes FrozenBN.

    Example::
        >>> net = ResNet(50, num_classes=None, out_features=["res4", "res5"])
        >>> {k: tuple(v.shape) for k, v in net.forward_features(torch.zeros(1, 3, 224, 224)).items()}
        {'res4': (1, 1024, 14, 14), 'res5': (1, 2048, 7, 7)}
    """

    def __init__(self, depth: int = 50, *, num_classes: int | None = 1000, out_features=None,
                 norm: str = "BN", stride_in_1x1: bool = False, shortcut: str = "B", plain: bool = False,
                 zero_init_residual: bool = False, freeze_at: int = 0, num_groups: int = 1,
                 width_per_group: int = 64, res5_dilation: int = 1, stem_out_channels: int = 64,
                 res2_out_channels: int = 0, in_channels: int = 3):
        super().__init__()
        block, counts = check_depth(depth)
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: expected one of {', '.join(NORMS)}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r}: expected one of {', '.join(SHORTCUTS)} (Table 3)")
        if res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation={res5_dilation!r}: expected 1 or 2")
        if block == "basic" and (num_groups != 1 or width_per_group != 64):
            raise ValueError(f"depth {depth} uses basic blocks, which need num_groups=1, width_per_group=64")
        out_features = list(out_features or ["res5"])
        for name in out_features:
            if name not in STAGE_NAMES:
                raise ValueError(f"out_features: {name!r} is not one of {', '.join(STAGE_NAMES)}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at={freeze_at!r}: expected 0 (nothing) .. 5 (all stages)")
        self.depth, self.out_features = depth, out_features
        last = max(STAGE_NAMES.index(n) for n in out_features)
        if num_classes is not None:
            last = 4  # the classifier reads res5

        # conv1: 7x7/64 stride 2, then 3x3 max pool stride 2 (Table 1).
        self.conv1 = nn.Conv2d(in_channels, stem_out_channels, 7, 2, 3, bias=False)
        self.bn1 = get_norm(norm, stem_out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        specs = {"stem": ShapeSpec(stem_out_channels, 4)}

        stride = 4
        for i in range(1, last + 1):
            stage = build_stage(i, block=block, num_blocks=counts[i - 1], norm=norm, shortcut=shortcut,
                                plain=plain, stride_in_1x1=stride_in_1x1, num_groups=num_groups,
                                width_per_group=width_per_group, res5_dilation=res5_dilation,
                                stem_out_channels=stem_out_channels, res2_out_channels=res2_out_channels)
            self.add_module(f"layer{i}", stage)
            stride *= stage[0].stride
            in_ch = stage[-1].out_channels
            specs[STAGE_NAMES[i]] = ShapeSpec(in_ch, stride)
        self.num_stages = last
        self._specs = specs

        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, zero_init_residual)
        self.freeze(freeze_at)

    def stage_modules(self) -> list[tuple[str, list[str]]]:
        """(stage name, attribute names) from the bottom: the stem is conv1+bn1, then res2.."""
        layers = [(STAGE_NAMES[i], [f"layer{i}"]) for i in range(1, self.num_stages + 1)]
        return [("stem", ["conv1", "bn1"]), *layers]

    def freeze(self, freeze_at: int) -> "ResNet":
        """Freeze the first `freeze_at` stages: no gradients, and BN statistics fixed (FrozenBN)."""
        for _, attrs in self.stage_modules()[:freeze_at]:
            for attr in attrs:
                module = getattr(self, attr)
                for p in module.parameters():
                    p.requires_grad_(False)
                setattr(self, attr, convert_to_frozen_bn(module))
        self.freeze_at = freeze_at
        return self

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: self._specs[name] for name in self.out_features}

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = OrderedDict()
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            if STAGE_NAMES[i] in self.out_features:
                outputs[STAGE_NAMES[i]] = x
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (global average pool + fc), as torchvision's ResNet."""
        if self.num_classes is None:
            raise RuntimeError("this ResNet was built without a classifier (num_classes=None); "
                               "use forward_features")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def convert_to_frozen_bn(module: nn.Module) -> nn.Module:
    """Replace BatchNorm2d (and SyncBN) in `module` by FrozenBatchNorm2d with the same statistics."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = convert_to_frozen_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


class ResNetBackbone(Backbone):
    """The stage outputs of a ResNet as a detection backbone; the net lives at `.body`."""

    def __init__(self, body: ResNet):
        super().__init__()
        if body.num_classes is not None:
            raise ValueError("a backbone's ResNet has no classifier: build it with num_classes=None")
        self.body = body

    def output_shape(self) -> dict[str, ShapeSpec]:
        return self.body.output_shape()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body.forward_features(x)


def _factory(depth: int, plain: bool = False):
    def build(*, num_classes: int | None = 1000, **kwargs) -> ResNet:
        return ResNet(depth, num_classes=num_classes, plain=plain, **kwargs)

    kind = "plain" if plain else "ResNet"
    build.__name__ = f"{'plain' if plain else 'resnet'}{depth}"
    build.__doc__ = f"{kind}-{depth} of Table 1; keyword arguments as `ResNet`."
    return build


resnet18, resnet34, resnet50, resnet101, resnet152 = (_factory(d) for d in ARCHS)
plain18, plain34 = _factory(18, plain=True), _factory(34, plain=True)


def plain_net(depth: int, **kwargs) -> ResNet:
    """A plain baseline of any depth in Table 1."""
    return ResNet(depth, plain=True, **kwargs)
