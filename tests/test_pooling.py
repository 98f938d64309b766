"""FastMultiScaleRoIAlign / roi_align_gather against their oracle, torchvision's MultiScaleRoIAlign and
roi_align: the same pooled features and feature gradients within float rounding, on FPN levels (fixed
sampling) and one C4 map (adaptive sampling, several sampling grids), aligned or not, NCHW or
channels_last, in training and inference mode; and FCHead reading the channels_last result."""
import pytest
import torch
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, roi_align

from resnet_det.modeling.detector.heads import FCHead
from resnet_det.modeling.detector.pooling import FastMultiScaleRoIAlign, roi_align_gather

SHAPES = [(200, 260), (180, 256)]
TOL = dict(rtol=1e-5, atol=1e-6)


def inputs(names, strides, num_rois=(150, 90), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    feats = {n: torch.randn(2, 8, 256 // s, 272 // s, generator=g, dtype=dtype, requires_grad=True)
             for n, s in zip(names, strides)}
    boxes = []
    for n in num_rois:  # tiny to image-sized boxes, so that every FPN level gets RoIs; some leave the image
        xy = torch.rand(n, 2, generator=g, dtype=dtype) * 240 - 10
        wh = torch.rand(n, 2, generator=g, dtype=dtype) ** 2 * 640 + 0.5
        boxes.append(torch.cat([xy, xy + wh], 1))
    return feats, boxes


def pool_and_grad(pooler, feats, boxes):
    for f in feats.values():
        f.grad = None
    out = pooler(feats, boxes, SHAPES)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)  # a non-uniform upstream gradient
    (out * weight).sum().backward()
    return out.detach(), {k: f.grad.clone() for k, f in feats.items()}


@pytest.mark.parametrize("names,strides,sampling", [(["p2", "p3", "p4", "p5"], [4, 8, 16, 32], 2),
                                                    (["res4"], [16], 0)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_torchvision_forward_backward_and_inference(names, strides, sampling, channels_last):
    feats, boxes = inputs(names, strides)
    if channels_last:
        feats = {k: v.detach().to(memory_format=torch.channels_last).requires_grad_() for k, v in feats.items()}
    ref = MultiScaleRoIAlign(names, 7, sampling)
    fast = FastMultiScaleRoIAlign(names, 7, sampling)
    out_ref, grad_ref = pool_and_grad(ref, feats, boxes)
    out, grad = pool_and_grad(fast, feats, boxes)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, out_ref, **TOL)
    for k in grad_ref:
        assert grad_ref[k].abs().sum() > 0, k  # every level received RoIs
        torch.testing.assert_close(grad[k], grad_ref[k], **TOL, msg=k)
    with torch.inference_mode():
        torch.testing.assert_close(fast(feats, boxes, SHAPES), out_ref, **TOL)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling", [0, 1, 3])
def test_roi_align_gather_equals_roi_align_float64(aligned, sampling):
    """One map, float64 (so any indexing slip shows far above rounding), boxes inside, across and
    outside the map, and degenerate ones (zero or negative size: adaptive sampling gives them no
    samples when aligned)."""
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 5, 23, 31, generator=g, dtype=torch.float64)
    xy = torch.rand(60, 2, generator=g, dtype=torch.float64) * 40 - 6
    wh = torch.rand(60, 2, generator=g, dtype=torch.float64) * 30
    wh[:6] = torch.tensor([0.0, -2.0, 0.3, 0.0, 1.0, 0.0], dtype=torch.float64).view(6, 1)
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=g).double(), xy, xy + wh], 1)
    ref = roi_align(feat, rois, (4, 6), 0.5, sampling, aligned)
    levels = torch.zeros(60, dtype=torch.int64)
    out = roi_align_gather([feat], rois, levels, [0.5], (4, 6), sampling, aligned)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_levels_without_rois_and_no_rois_at_all():
    names = ["p2", "p3", "p4", "p5"]
    feats, boxes = inputs(names, [4, 8, 16, 32])
    boxes = [b[:, :2].clamp(min=0).repeat(1, 2) + torch.tensor([0, 0, 20, 20]) for b in boxes]  # all on p2
    out_ref, grad_ref = pool_and_grad(MultiScaleRoIAlign(names, 7, 2), feats, boxes)
    out, grad = pool_and_grad(FastMultiScaleRoIAlign(names, 7, 2), feats, boxes)
    torch.testing.assert_close(out, out_ref, **TOL)
    assert grad_ref["p2"].abs().sum() > 0 and not grad["p5"].any()
    for k in names:
        torch.testing.assert_close(grad[k], grad_ref[k], **TOL, msg=k)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    assert FastMultiScaleRoIAlign(names, 7, 2)(feats, empty, SHAPES).shape == (0, 8, 7, 7)


def test_falls_back_to_torchvision_where_it_must():
    feats, boxes = inputs(["p2", "p3"], [4, 8])
    fast = FastMultiScaleRoIAlign(["p2", "p3"], 7, 2)
    f = list(feats.values())
    assert fast._use_gather(f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast._use_gather(f)
    assert not fast._use_gather([t.detach().half() for t in f])
    traced = torch.jit.trace(lambda x, y: fast({"p2": x, "p3": y}, boxes, SHAPES), (f[0].detach(), f[1].detach()),
                             check_trace=False)
    graph = str(traced.graph)
    assert "torchvision::roi_align" in graph and "embedding_bag" not in graph  # exporters see torchvision's op
    ref = MultiScaleRoIAlign(["p2", "p3"], 7, 2)
    assert torch.equal(traced(f[0].detach(), f[1].detach()), ref(feats, boxes, SHAPES).detach())


def test_fc_head_reads_channels_last_features_like_torchvision_two_mlp_head():
    torch.manual_seed(0)
    head, oracle = FCHead(8 * 7 * 7, 32), TwoMLPHead(8 * 7 * 7, 32)
    oracle.load_state_dict(head.state_dict())
    x = torch.randn(20, 8, 7, 7)
    nhwc = x.to(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    torch.testing.assert_close(head(nhwc), oracle(x), **TOL)  # with gradients: the permuted weight is tracked
    head(nhwc).sum().backward()
    oracle(x).sum().backward()
    torch.testing.assert_close(head.fc6.weight.grad, oracle.fc6.weight.grad, **TOL)
    with torch.no_grad():
        torch.testing.assert_close(head(nhwc), oracle(x), **TOL)  # cached permuted weight
        for m in (head, oracle):
            m.fc6.weight.mul_(-0.5)  # an in-place update (optimizer step, load_state_dict) refreshes the cache
    with torch.inference_mode():
        torch.testing.assert_close(head(nhwc), oracle(x), **TOL)
        torch.testing.assert_close(head(x), oracle(x), **TOL)  # NCHW input: the plain path


def test_fc_head_cache_sees_edits_through_data():
    """fc6's NHWC-ordered weight is cached by value, as the folded conv weights are: a write through
    `.data` (which no version counter records) after a first eval forward reaches the next forward."""
    torch.manual_seed(0)
    head, oracle = FCHead(8 * 7 * 7, 32).eval(), TwoMLPHead(8 * 7 * 7, 32).eval()
    oracle.load_state_dict(head.state_dict())
    x = torch.randn(20, 8, 7, 7)
    nhwc = x.to(memory_format=torch.channels_last)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            torch.testing.assert_close(head(nhwc), oracle(x), **TOL)  # fills the cache
            for m in (head, oracle):
                m.fc6.weight.data.mul_(-0.5)  # .data: no version counter bump
                m.fc6.weight.data[:, :7] = 0.25
            torch.testing.assert_close(head(nhwc), oracle(x), **TOL)
            for i in (-1, head.fc6.weight.numel() // 2):  # the last and a middle element only
                for m in (head, oracle):
                    m.fc6.weight.data.view(-1)[i] += 3.0
                torch.testing.assert_close(head(nhwc), oracle(x), **TOL)
