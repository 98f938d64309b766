"""BN folding (MODEL.FUSE_CONV_BN_RELU, on by default) never changes a model's function: not for a
user backbone laid out differently from ours, not after weight edits the version counters miss, not
after the model's norms are replaced. The oracle is always the same model without folding."""
import os

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from resnet_det.config import get_cfg
from resnet_det.modeling.backbone import BACKBONE_REGISTRY
from resnet_det.modeling.backbone.backbone import Backbone, ShapeSpec
from resnet_det.modeling.backbone.resnet import ResNet
from resnet_det.modeling.detector import build_model
from resnet_det.modeling.fusion import FoldedConv2d, fuse_conv_bn_relu
from resnet_det.modeling.speed import to_channels_last
from resnet_det.utils.benchmark import pretrained_like_norms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def x(n=2, size=64, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def nhwc(t):
    return t.contiguous(memory_format=torch.channels_last)


def net(depth=18, norm="FrozenBN", **kw):
    torch.manual_seed(0)
    return pretrained_like_norms(ResNet(depth, norm=norm, num_classes=10, **kw))


# ---- a user backbone with pre-activation blocks: bn before conv, under our sibling names ----------
class PreActBlock(nn.Module):
    """He et al. 2016b's pre-activation block: `bnK` normalises the input of `convK`, not its output."""

    def __init__(self, channels: int, norm):
        super().__init__()
        self.bn1, self.conv1 = norm(channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2, self.conv2 = norm(channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, t):
        out = self.conv1(torch.relu(self.bn1(t)))
        return t + self.conv2(torch.relu(self.bn2(out)))


class PreActBackbone(Backbone):
    def __init__(self, channels: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 7, stride=4, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)  # here the stem's norm is the *next* block's input norm
        self.stage = nn.Sequential(PreActBlock(channels, nn.BatchNorm2d), nn.MaxPool2d(2),
                                   PreActBlock(channels, FrozenBatchNorm2d), nn.MaxPool2d(2))
        self.channels = channels

    def output_shape(self):
        return {"res4": ShapeSpec(self.channels, 16)}

    def forward(self, images):
        t = self.conv1(images)
        return {"res4": self.stage(t + 0.1 * self.bn1(t))}


if "build_preact_test_backbone" not in BACKBONE_REGISTRY:
    @BACKBONE_REGISTRY.register()
    def build_preact_test_backbone(cfg, input_shape):
        return PreActBackbone()


def preact_detector(fuse: bool):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-RCNN-C4.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_preact_test_backbone",
                         "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
                         "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7,
                         "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
                         "MODEL.RPN.POST_NMS_TOPK_TEST", 32, "MODEL.FUSE_CONV_BN_RELU", fuse])
    torch.manual_seed(0)
    model = build_model(cfg)
    pretrained_like_norms(model)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1:] += 4.0  # so that random weights detect boxes
    return model.eval()


def test_preactivation_backbone_from_the_registry_keeps_its_outputs():
    plain, fused = preact_detector(False), preact_detector(True)
    fused.load_state_dict(plain.state_dict())
    image = torch.randint(0, 255, (3, 90, 120), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        feats = [m.backbone(m.transform([image.float()])[0].tensors)["res4"] for m in (plain, fused)]
        torch.testing.assert_close(feats[1], feats[0], rtol=1e-5, atol=1e-5)
        ref, out = (m([{"image": image}])[0]["instances"] for m in (plain, fused))
    assert len(ref["boxes"]) > 0
    torch.testing.assert_close(out["boxes"], ref["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(out["scores"], ref["scores"], rtol=0, atol=1e-5)
    assert not any(isinstance(m, FoldedConv2d) for m in fused.backbone.modules())  # unknown layout: left alone


def test_only_known_layouts_fold():
    """Sibling names and a conv -> norm order in a Sequential are not evidence of bn(conv(x))."""
    class Renamed(nn.Module):  # a user block with our names whose forward we do not know
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(4, 4, 1), FrozenBatchNorm2d(4)

        def forward(self, t):
            return self.bn1(t) + self.conv1(t)

    user = nn.Sequential(Renamed(), nn.Conv2d(4, 4, 1), FrozenBatchNorm2d(4))
    assert fuse_conv_bn_relu(user) == 0
    assert fuse_conv_bn_relu(net(18)) == 20  # ours: stem + 8 blocks x 2 + 3 projection shortcuts


# ---- the fold cache sees edits that bypass the version counters ----------------------------------
def memory_order(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's elements in the order they lie in memory (NCHW or channels-last)."""
    assert t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)
    return t.as_strided((t.numel(),), (1,))


def test_fold_cache_sees_edits_through_data():
    for fused_blocks in (False, True):
        fast, plain = net(18, norm="BN").eval(), net(18, norm="BN").eval()
        if fused_blocks:  # the oneDNN path caches packed weights too
            fast, plain = to_channels_last(fast), to_channels_last(plain)
        fuse_conv_bn_relu(fast)
        inp = nhwc(x()) if fused_blocks else x()
        with torch.no_grad():
            torch.testing.assert_close(fast(inp), plain(inp), rtol=1e-4, atol=1e-4)  # fills the caches
            for m in (fast, plain):
                m.layer1[0].conv1.weight.data.mul_(2)  # .data: no version counter bump
                m.layer2[0].bn2.running_var.data.fill_(0.25)
                m.bn1.bias.data.add_(1.0)
                m.layer3[0].downsample[0].weight.data[:, :, 0, 0] *= -1
            torch.testing.assert_close(fast(inp), plain(inp), rtol=1e-4, atol=1e-4,
                                       msg=f"fused blocks {fused_blocks}")
        with torch.inference_mode():
            for m in (fast, plain):
                m.layer4[1].conv2.weight.data.zero_()
            torch.testing.assert_close(fast(inp), plain(inp), rtol=1e-4, atol=1e-4)
        # One element at a time, last and middle in memory order: a check that reads only the first
        # bytes (or the ends) of a tensor misses these.
        for where in ("last", "middle"):
            with torch.no_grad():
                for tensor_of in (lambda m: m.layer2[1].conv1.weight, lambda m: m.layer3[0].bn1.running_var,
                                  lambda m: m.layer1[1].conv2.weight):
                    for m in (fast, plain):
                        flat = memory_order(tensor_of(m).data)
                        flat[-1 if where == "last" else flat.numel() // 2] += 3.0
                    torch.testing.assert_close(fast(inp), plain(inp), rtol=1e-4, atol=1e-4,
                                               msg=f"fused blocks {fused_blocks}, {where} element")


# ---- replacing a folded pair's modules must not apply a norm twice (or drop one) -----------------
def test_convert_sync_batchnorm_after_folding():
    fast, plain = net(18, norm="BN").eval(), net(18, norm="BN").eval()
    fuse_conv_bn_relu(fast)
    with torch.no_grad():
        fast(x())  # a cached fold exists
        fast = nn.SyncBatchNorm.convert_sync_batchnorm(fast).eval()
        plain = nn.SyncBatchNorm.convert_sync_batchnorm(plain).eval()
        assert isinstance(fast.bn1, nn.SyncBatchNorm)
        torch.testing.assert_close(fast(x()), plain(x()), rtol=1e-4, atol=1e-4)


def test_freezing_after_folding():
    for fused_blocks in (False, True):
        fast, plain = net(18, norm="BN").eval(), net(18, norm="BN").eval()
        if fused_blocks:
            fast, plain = to_channels_last(fast), to_channels_last(plain)
        fuse_conv_bn_relu(fast)
        inp = nhwc(x()) if fused_blocks else x()
        with torch.no_grad():
            fast(inp)
            fast.freeze(3)  # stem, res2, res3: BN -> FrozenBN (new modules, same statistics)
            plain.freeze(3)
            assert type(fast.layer1[0].bn1) is FrozenBatchNorm2d
            torch.testing.assert_close(fast(inp), plain(inp), rtol=1e-4, atol=1e-4)
            # In training mode too: the new FrozenBN applies once, the trainable BNs use the batch.
            torch.testing.assert_close(fast.train()(inp), plain.train()(inp), rtol=1e-4, atol=1e-4)
            fast.eval(), plain.eval()
            # Folding again picks up the new pairs, with the same function.
            assert fuse_conv_bn_relu(fast) == 1 + 4 + 5  # stem, res2's 2 x 2 convs, res3's 2 x 2 + projection
            torch.testing.assert_close(fast(inp), plain(inp), rtol=1e-4, atol=1e-4)


def test_replacing_a_folded_conv_keeps_its_norm():
    fast, plain = net(18).eval(), net(18).eval()
    fuse_conv_bn_relu(fast)
    with torch.no_grad():
        fast(x())
        for m in (fast, plain):  # e.g. a user swaps in a new conv with the same weights
            old = m.layer1[0].conv1
            new = nn.Conv2d(old.in_channels, old.out_channels, 3, padding=1, bias=False)
            new.weight.copy_(old.weight)
            m.layer1[0].conv1 = new
        torch.testing.assert_close(fast(x()), plain(x()), rtol=1e-4, atol=1e-4)
