"""The training-loss keys (MODEL.RPN / ROI_BOX_HEAD .BBOX_REG_LOSS_TYPE, SMOOTH_L1_BETA, ..._WEIGHT,
RPN.LOSS_NORMALIZER): detectron2's box losses with fvcore's (which detectron2 calls) as the oracle, and
bad values refused by name. The whole step against detectron2 is tests/test_detectron2_training.py."""
import warnings

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from resnet_det.config import get_cfg, validate_cfg
from resnet_det.modeling.detector.detectron2_style import BoxRegressionLoss
from resnet_det.utils.errors import ConfigError

with warnings.catch_warnings():  # fvcore.nn runs torch.jit.script at import, which torch deprecates
    warnings.simplefilter("ignore")
    from fvcore.nn import giou_loss, smooth_l1_loss


def boxes_and_deltas(n: int = 40):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * 200
    ref = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 100], 1)
    gt = ref + torch.randn(n, 4, generator=g) * 8
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    return ref, gt, torch.randn(n, 4, generator=g) * 0.3


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])  # RPN, box head
def test_box_losses_are_detectron2s(weights):
    ref, gt, pred = boxes_and_deltas()
    coder = BoxCoder(weights)
    target = coder.encode_single(gt, ref)
    for beta in (0.0, 1.0 / 9, 0.5):  # detectron2's zoo: 0 (L1); torchvision: 1/9
        ours = BoxRegressionLoss("smooth_l1", beta)(pred, target, ref, gt, coder)
        torch.testing.assert_close(ours, smooth_l1_loss(pred, target, beta, reduction="sum"))
    # detectron2's _dense_box_regression_loss "giou": the predicted deltas applied to the reference boxes.
    ours = BoxRegressionLoss("giou")(pred, target, ref, gt, coder)
    torch.testing.assert_close(ours, giou_loss(coder.decode_single(pred, ref), gt, reduction="sum"))
    # A perfect prediction costs nothing in every type.
    for kind in ("smooth_l1", "giou", "diou", "ciou"):
        assert BoxRegressionLoss(kind, 0.0)(target, target, ref, gt, coder).abs().item() < 1e-3, kind


@pytest.mark.parametrize("key,value", [("MODEL.RPN.LOSS_NORMALIZER", "mean"),
                                       ("MODEL.RPN.BBOX_REG_LOSS_TYPE", "l2"),
                                       ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "iou"),
                                       ("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", -0.1),
                                       ("MODEL.RPN.LOSS_WEIGHT", -1.0)])
def test_bad_loss_keys_are_refused_by_name(key, value):
    cfg = get_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_cfg(cfg)


def test_defaults_are_torchvisions():
    """torchvision's rpn.py / roi_heads.py: smooth L1 with beta 1/9, the RPN losses averaged over the
    sampled anchors, no extra weights (the torchvision-equivalent configs rely on these)."""
    cfg = get_cfg()
    for node in (cfg.MODEL.RPN, cfg.MODEL.ROI_BOX_HEAD):
        assert (node.BBOX_REG_LOSS_TYPE, node.SMOOTH_L1_BETA, node.BBOX_REG_LOSS_WEIGHT) == ("smooth_l1", 1 / 9, 1.0)
    assert (cfg.MODEL.RPN.LOSS_NORMALIZER, cfg.MODEL.RPN.LOSS_WEIGHT) == ("sampled", 1.0)
