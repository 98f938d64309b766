"""ParallelMultiScaleRoIAlign against its oracle, torchvision's MultiScaleRoIAlign: the same pooled
features bit for bit, the same feature gradients up to summation order, on FPN levels (fixed sampling)
and on one C4 map (adaptive sampling), in training and in inference mode, with threads forced to 2."""
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from resnet_det.modeling.detector import pooling
from resnet_det.modeling.detector.pooling import ParallelMultiScaleRoIAlign

SHAPES = [(200, 260), (180, 256)]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def inputs(names, strides, num_rois=(150, 90), seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {n: torch.randn(2, 8, 256 // s, 272 // s, generator=g, requires_grad=True) for n, s in zip(names, strides)}
    boxes = []
    for n in num_rois:  # tiny to image-sized boxes, so that every FPN level gets RoIs; some leave the image
        xy = torch.rand(n, 2, generator=g) * 240 - 10
        wh = torch.rand(n, 2, generator=g) ** 2 * 640 + 0.5
        boxes.append(torch.cat([xy, xy + wh], 1))
    return feats, boxes


def pool_and_grad(pooler, feats, boxes):
    for f in feats.values():
        f.grad = None
    out = pooler(feats, boxes, SHAPES)
    weight = torch.linspace(-1, 1, out.numel()).view_as(out)  # a non-uniform upstream gradient
    (out * weight).sum().backward()
    return out.detach(), {k: f.grad.clone() for k, f in feats.items()}


@pytest.mark.parametrize("names,strides,sampling", [(["p2", "p3", "p4", "p5"], [4, 8, 16, 32], 2),
                                                    (["res4"], [16], 0)])
def test_equals_torchvision_forward_backward_and_inference(two_threads, names, strides, sampling):
    feats, boxes = inputs(names, strides)
    ref = MultiScaleRoIAlign(names, 7, sampling)
    par = ParallelMultiScaleRoIAlign(names, 7, sampling)
    assert par._parallel_parts(list(feats.values()), boxes) == 2  # the parallel path really runs
    out_ref, grad_ref = pool_and_grad(ref, feats, boxes)
    out_par, grad_par = pool_and_grad(par, feats, boxes)
    assert torch.equal(out_par, out_ref)
    for k in grad_ref:
        assert grad_ref[k].abs().sum() > 0, k  # every level received RoIs
        torch.testing.assert_close(grad_par[k], grad_ref[k], rtol=1e-5, atol=1e-6, msg=k)
    with torch.inference_mode():
        assert torch.equal(par(feats, boxes, SHAPES), ref(feats, boxes, SHAPES))
    cl = {k: v.detach().to(memory_format=torch.channels_last) for k, v in feats.items()}
    assert torch.equal(par(cl, boxes, SHAPES), out_ref)


def test_chunks_cover_every_roi_once_with_balanced_work():
    levels = torch.tensor([2, 0, 1, 0, 3, 1, 1, 0, 2, 2, 3, 0])
    rois = torch.zeros(len(levels), 5)
    runs = pooling._chunks(rois, levels, [1.0] * 4, (7, 7), 2, parts=3)
    assert len(runs) == 3 and [sum(len(i) for _, i in r) for r in runs] == [4, 4, 4]
    seen = torch.cat([idx for r in runs for _, idx in r])
    assert sorted(seen.tolist()) == list(range(len(levels)))
    assert all(bool((levels[idx] == lv).all()) for r in runs for lv, idx in r)
    # Adaptive sampling: a large RoI costs more sampling points than small ones, so it gets its own run.
    rois = torch.tensor([[0, 0, 0, 700, 700]] + [[0, 0, 0, 7, 7]] * 20, dtype=torch.float32)
    runs = pooling._chunks(rois, torch.zeros(21, dtype=torch.int64), [1.0], (7, 7), 0, parts=2)
    assert [sum(len(i) for _, i in r) for r in runs] == [1, 20]
    # ... also when it comes last (the split takes the closer edge, not always the one after).
    rois = torch.tensor([[0, 0, 0, 7, 7]] * 70 + [[0, 0, 0, 900, 900]], dtype=torch.float32)
    levels = torch.zeros(71, dtype=torch.int64)
    assert [sum(len(i) for _, i in r) for r in pooling._chunks(rois, levels, [1.0], (7, 7), 0, parts=2)] == [70, 1]
    feat = torch.randn(1, 4, 32, 32)
    out = pooling._ParallelRoIAlign.apply(rois, levels, [1.0], (7, 7), 0, 2, feat)
    assert torch.equal(out, roi_align(feat, rois, 7, 1.0, 0))
    assert pooling._run_parallel(lambda c: c * 2, [3]) == [6]  # a single chunk runs inline


def test_falls_back_to_torchvision_where_it_must(two_threads, monkeypatch):
    feats, boxes = inputs(["p2", "p3"], [4, 8])
    par = ParallelMultiScaleRoIAlign(["p2", "p3"], 7, 2)
    f = list(feats.values())
    assert par._parallel_parts(f, [b[:20] for b in boxes]) == 1  # few RoIs
    torch.set_num_threads(1)
    assert par._parallel_parts(f, boxes) == 1  # one thread
    torch.set_num_threads(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert par._parallel_parts(f, boxes) == 1
    calls = []
    monkeypatch.setattr(pooling._ParallelRoIAlign, "apply", lambda *a: calls.append(a))
    traced = torch.jit.trace(lambda x, y: par({"p2": x, "p3": y}, boxes, SHAPES), (f[0].detach(), f[1].detach()),
                            check_trace=False)
    assert not calls  # tracing records torchvision's ops, not the thread pool
    ref = MultiScaleRoIAlign(["p2", "p3"], 7, 2)
    assert torch.equal(traced(f[0].detach(), f[1].detach()), ref(feats, boxes, SHAPES).detach())


def test_levels_without_rois_get_zero_gradients_like_torchvision(two_threads):
    names = ["p2", "p3", "p4", "p5"]
    feats, boxes = inputs(names, [4, 8, 16, 32])
    boxes = [b[:, :2].clamp(min=0).repeat(1, 2) + torch.tensor([0, 0, 20, 20]) for b in boxes]  # all on p2
    out_ref, grad_ref = pool_and_grad(MultiScaleRoIAlign(names, 7, 2), feats, boxes)
    out_par, grad_par = pool_and_grad(ParallelMultiScaleRoIAlign(names, 7, 2), feats, boxes)
    assert torch.equal(out_par, out_ref)
    assert grad_ref["p2"].abs().sum() > 0 and not grad_par["p5"].any()
    for k in names:
        torch.testing.assert_close(grad_par[k], grad_ref[k], rtol=1e-5, atol=1e-6, msg=k)
