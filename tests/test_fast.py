"""Fast paths (resnet_det.modeling.fusion / speed) give the plain path's outputs and gradients within float
tolerance: FrozenBN/BN folding, channels_last, through the detector's config switches."""
import copy
import io
import os

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from resnet_det.config import get_cfg
from resnet_det.modeling.backbone.resnet import ResNet
from resnet_det.modeling.detector import build_model
from resnet_det.engine.meter import DeviceMeter
from resnet_det.modeling import fusion, speed
from resnet_det.modeling.detector.pooling import FastMultiScaleRoIAlign
from resnet_det.modeling.fusion import FoldedConv2d, fuse_conv_bn_relu, unfuse_conv_bn_relu
from resnet_det.modeling.speed import apply_fast_path, to_channels_last
from resnet_det.utils.benchmark import pretrained_like_norms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def net(depth=18, norm="FrozenBN", **kw):
    torch.manual_seed(0)
    return pretrained_like_norms(ResNet(depth, norm=norm, num_classes=10, **kw))


def assert_rel_close(a, b, tol=1e-4, msg=""):
    """Relative L2 error: elementwise tolerances misjudge gradients that are near zero in places."""
    rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    assert rel < tol, f"{msg}: relative L2 error {rel:.2e} >= {tol}"


def x(n=2, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("depth,pairs", [(18, 20), (50, 53)])
def test_fold_counts_and_keeps_state_dict(depth, pairs):
    # ResNet-18: stem + 8 blocks x 2 convs + 3 projections; ResNet-50: stem + 16 x 3 + 4 (Table 1).
    model = net(depth)
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    assert fuse_conv_bn_relu(model) == pairs
    assert sum(isinstance(m, FoldedConv2d) for m in model.modules()) == pairs
    after = model.state_dict()
    assert list(after) == list(keys) and all(torch.equal(after[k], keys[k]) for k in keys)
    assert fuse_conv_bn_relu(model) == 0  # already folded: nothing left to fold


def test_folded_forward_equals_torchvision():
    tv = pretrained_like_norms(torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d, num_classes=10)).eval()
    ours = ResNet(18, norm="FrozenBN", num_classes=10)
    ours.load_state_dict(tv.state_dict())
    fuse_conv_bn_relu(ours)
    with torch.inference_mode():
        ref, out = tv(x()), ours(x())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_folded_training_gradients_and_steps_match_plain():
    plain, fast = net(18), net(18)
    fuse_conv_bn_relu(fast)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, fast)]
    for step in range(3):
        for m, opt in zip((plain, fast), opts):
            opt.zero_grad()
            m(x()).square().mean().backward()
        for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
            assert_rel_close(q.grad, p.grad, msg=f"step {step} grad of {n}")
        for opt in opts:
            opt.step()
    # Inference after training uses the updated weights (the cached fold is not stale).
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x()), plain.eval()(x()), rtol=1e-4, atol=1e-4)


def test_frozen_stage_in_training_uses_cache_and_still_backprops():
    plain, fast = net(18, freeze_at=2), net(18, freeze_at=2)
    fuse_conv_bn_relu(fast)
    for m in (plain, fast):
        m(x()).sum().backward()
    conv1 = fast.conv1
    assert isinstance(conv1, FoldedConv2d) and conv1._fold_cache.value is not None  # frozen stem: cached fold
    assert fast.layer3[0].conv1._fold_cache.value is None  # trainable: folded on the fly, with gradients
    for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
        if p.requires_grad:
            assert_rel_close(q.grad, p.grad, msg=n)


def test_batchnorm_folds_only_in_eval_and_tracks_new_statistics():
    plain, fast = net(18, norm="BN"), net(18, norm="BN")
    fuse_conv_bn_relu(fast)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x()), plain.eval()(x()), rtol=1e-4, atol=1e-4)
        # Training mode: batch statistics (no fold), and the running statistics update alike.
        torch.testing.assert_close(fast.train()(x(4)), plain.train()(x(4)), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.bn1.running_var, plain.bn1.running_var)
        # Back in eval, the fold uses the new statistics, not the cached old ones.
        torch.testing.assert_close(fast.eval()(x()), plain.eval()(x()), rtol=1e-4, atol=1e-4)


def test_load_state_dict_after_fold_and_unfold():
    fast, other = net(18), pretrained_like_norms(net(18), seed=5)
    fuse_conv_bn_relu(fast)
    with torch.no_grad():
        fast.eval()(x())  # fill the cache with the old weights
        fast.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x()), other.eval()(x()), rtol=1e-4, atol=1e-4)
        assert unfuse_conv_bn_relu(fast) == 20
        assert not any(isinstance(m, FoldedConv2d) for m in fast.modules())
        assert type(fast.bn1) is FrozenBatchNorm2d
        torch.testing.assert_close(fast(x()), other(x()), rtol=1e-4, atol=1e-4)


def test_deepcopy_and_save_keep_their_own_norms():
    fast = net(18).eval()
    fuse_conv_bn_relu(fast)
    clone = copy.deepcopy(fast)
    assert clone.conv1._fold_norm is clone.bn1 and clone.bn1 is not fast.bn1
    buf = io.BytesIO()
    torch.save(fast, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    with torch.no_grad():
        ref = fast(x())
        fast.bn1.running_var.mul_(4)  # changes the original only
        torch.testing.assert_close(clone(x()), ref)
        torch.testing.assert_close(loaded(x()), ref)
        assert not torch.allclose(fast(x()), ref)


def test_channels_last_and_jit_trace_equal():
    plain, fast = net(18).eval(), net(18).eval()
    fuse_conv_bn_relu(fast)
    fast = fast.to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = plain(x())
        torch.testing.assert_close(fast(x().contiguous(memory_format=torch.channels_last)), ref,
                                   rtol=1e-4, atol=1e-4)
        traced = torch.jit.trace(fast, (x(),), check_trace=False)  # the TorchScript/ONNX export path
        torch.testing.assert_close(traced(x()), ref, rtol=1e-4, atol=1e-4)


def nhwc(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("depth,kw", [(50, {}), (18, {}), (18, {"plain": True}), (18, {"shortcut": "A"})])
def test_fused_blocks_equal_the_blocks_own_forward(monkeypatch, depth, kw):
    """CPU NHWC inference: each folded conv runs with its ReLU and the residual addition in one oneDNN
    call, on weights packed once; the oracle is the same model with the blocks' own forward."""
    if fusion._pointwise_conv_op() is None:
        pytest.skip("this PyTorch build has no oneDNN")
    fused = to_channels_last(net(depth, **kw).eval())
    fuse_conv_bn_relu(fused)
    assert isinstance(fused.layer1[0], fusion._FusedBlockMixin)
    oracle = copy.deepcopy(fused)
    unfuse_conv_bn_relu(oracle)
    assert not any(isinstance(m, fusion._FusedBlockMixin) for m in oracle.modules())
    calls = []
    real = fusion._conv_relu
    monkeypatch.setattr(fusion, "_conv_relu", lambda *a: calls.append(1) or real(*a))
    convs_in_blocks = sum(isinstance(m, FoldedConv2d) and n.split(".")[-1].startswith("conv")
                          for n, m in fused.named_modules() if n.startswith("layer"))
    with torch.inference_mode():
        for size in (64, 80, 64):  # a new input shape repacks the weights; the old one again
            ref = oracle(nhwc(x(size=size)))
            torch.testing.assert_close(fused(nhwc(x(size=size))), ref, rtol=1e-5, atol=1e-5)
    assert len(calls) == 3 * convs_in_blocks  # the fused path really ran, for every block conv
    calls.clear()
    with torch.no_grad():
        fused.bn1.running_var.mul_(2)  # new statistics and weights reach the packed weights
        oracle.bn1.running_var.mul_(2)
        fused.layer1[0].bn2.running_var.mul_(3)
        oracle.layer1[0].bn2.running_var.mul_(3)
        torch.testing.assert_close(fused(nhwc(x())), oracle(nhwc(x())), rtol=1e-5, atol=1e-5)
        assert calls
    buf = io.BytesIO()
    torch.save(fused, buf)  # packed oneDNN weights are dropped from copies and pickles
    for other in (copy.deepcopy(fused), torch.load(io.BytesIO(buf.getvalue()), weights_only=False)):
        with torch.no_grad():
            torch.testing.assert_close(other(nhwc(x())), oracle(nhwc(x())), rtol=1e-5, atol=1e-5)


def test_fused_blocks_fall_back_where_they_must(monkeypatch):
    fused = to_channels_last(net(18).eval())
    fuse_conv_bn_relu(fused)
    calls = []
    real = fusion._conv_relu
    monkeypatch.setattr(fusion, "_conv_relu", lambda *a: calls.append(1) or real(*a))
    oracle = net(18).eval()
    with torch.no_grad():
        ref = oracle(x())
        # NCHW input: the stem's NHWC weights make its output NHWC, so the blocks may fuse.
        torch.testing.assert_close(fused(x()), ref, rtol=1e-4, atol=1e-4)
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # oneDNN's fused call would run float32
            out = fused(nhwc(x()))
            fused.layer1(nhwc(torch.randn(2, 64, 16, 16)))  # float32 NHWC input: fusable but for autocast
        assert out.dtype == torch.bfloat16 and not calls  # autocast applied; no float32-only fused call
        assert_rel_close(out.float(), ref, tol=3e-2, msg="bfloat16 autocast")  # bf16: 8-bit mantissa
        seen = []
        handle = fused.layer1[0].conv2.register_forward_hook(lambda *a: seen.append(1))
        fused(nhwc(x()))  # a hook on a block's conv still fires: that block runs unfused
        handle.remove()
        assert seen
        calls.clear()
        traced = torch.jit.trace(fused, (nhwc(x()),), check_trace=False)  # the export path
        assert "_convolution_pointwise" not in str(traced.graph)
        torch.testing.assert_close(traced(nhwc(x())), ref, rtol=1e-4, atol=1e-4)
    inp = nhwc(x()).requires_grad_()  # a gradient is needed: the blocks' own forward
    fused(inp).sum().backward()
    assert inp.grad is not None and fused.layer1[0].conv1.weight.grad is not None
    assert not calls
    if fusion._pointwise_conv_op() is not None:  # frozen blocks (FREEZE_AT) fuse in training too
        fused.train()
        for m in (fused.conv1, fused.bn1, fused.layer1):  # FREEZE_AT 2: stem and res2
            for p in m.parameters():
                p.requires_grad_(False)
        fused(nhwc(x())).sum().backward()
        assert len(calls) == 4  # layer1's two blocks x two convs; later stages need gradients


def detector_cfg(base, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", base))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", 0, "INPUT.MIN_SIZE_TRAIN", (96,),
                         "INPUT.MAX_SIZE_TRAIN", 128, "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
                         "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
                         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, *opts])
    return cfg


def batch():
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 255, (3, 90, 120), dtype=torch.uint8, generator=g),
             "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "classes": torch.tensor([2])},
            {"image": torch.randint(0, 255, (3, 100, 80), dtype=torch.uint8, generator=g),
             "boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "classes": torch.tensor([0])}]


@pytest.mark.parametrize("base,head", [("Base-RCNN-FPN.yaml", None), ("Base-RCNN-C4.yaml", "res5")])
def test_detector_switches_equal_outputs_and_losses(base, head):
    models = {}
    for name, opts in {"plain": ["MODEL.FUSE_CONV_BN_RELU", False, "MODEL.ROI_BOX_HEAD.POOLER_IMPL", "torchvision"],
                       "fast": ["MODEL.FUSE_CONV_BN_RELU", True, "MODEL.CHANNELS_LAST", True,
                                "MODEL.ROI_BOX_HEAD.POOLER_IMPL", "gather"]}.items():
        torch.manual_seed(0)
        models[name] = build_model(detector_cfg(base, *opts))
    plain, fast = models["plain"], models["fast"]
    pretrained_like_norms(plain)
    fast.load_state_dict(plain.state_dict())  # loading after build_model's fold is fine
    assert plain.state_dict().keys() == fast.state_dict().keys()
    assert not any(isinstance(m, FoldedConv2d) for m in plain.modules())
    assert isinstance(fast.backbone.body.conv1, FoldedConv2d)
    assert isinstance(fast.roi_heads.box_roi_pool, FastMultiScaleRoIAlign)
    assert not isinstance(plain.roi_heads.box_roi_pool, FastMultiScaleRoIAlign)
    if head:  # the C4 per-region res5 head is folded too
        assert isinstance(fast.roi_heads.box_head.res5[0].conv1, FoldedConv2d)
    with torch.no_grad():
        for m in (plain, fast):
            m.roi_heads.box_predictor.cls_score.bias[1:] += 4.0  # so that random weights detect boxes
    with torch.inference_mode():
        ref, out = (m.eval()([{"image": batch()[0]["image"]}])[0]["instances"] for m in (plain, fast))
    assert len(ref["boxes"]) > 0 and out["boxes"].shape == ref["boxes"].shape
    torch.testing.assert_close(out["boxes"], ref["boxes"], atol=1e-2, rtol=0)
    torch.testing.assert_close(out["scores"], ref["scores"], atol=1e-4, rtol=0)
    assert torch.equal(out["pred_classes"], ref["pred_classes"])
    losses = {}
    for name, m in models.items():
        torch.manual_seed(3)  # the same RPN / RoI sampling
        losses[name] = m.train()(batch())
    for k, v in losses["plain"].items():
        torch.testing.assert_close(losses["fast"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_compile_switch_runs_and_keeps_outputs(monkeypatch):
    """MODEL.COMPILE through build_model: dynamo captures the folded backbone and the detections equal
    the plain model's. Backend aot_eager (dynamo + AOTAutograd tracing, no code generation): inductor's
    C++ compilation of this backbone takes about two minutes on the 2-core test machine."""
    graphs = []

    def aot_eager_counting(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.registry.lookup_backend("aot_eager")(gm, example_inputs)

    real = speed.compile_backbone
    monkeypatch.setattr(speed, "compile_backbone", lambda m, **kw: real(m, backend=aot_eager_counting))
    torch._dynamo.reset()
    plain = pretrained_like_norms(build_model(detector_cfg("Base-RCNN-FPN.yaml", "MODEL.FUSE_CONV_BN_RELU", False)))
    compiled = build_model(detector_cfg("Base-RCNN-FPN.yaml", "MODEL.COMPILE", True))
    compiled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for m in (plain, compiled):
            m.roi_heads.box_predictor.cls_score.bias[1:] += 4.0  # so that random weights detect boxes
    try:
        with torch.no_grad():
            ref, out = (m.eval()([{"image": batch()[0]["image"]}])[0]["instances"] for m in (plain, compiled))
    finally:
        torch._dynamo.reset()
    assert graphs, "the backbone was not compiled"
    assert len(ref["boxes"]) > 0 and out["boxes"].shape == ref["boxes"].shape
    torch.testing.assert_close(out["boxes"], ref["boxes"], atol=1e-2, rtol=0)
    torch.testing.assert_close(out["scores"], ref["scores"], atol=1e-4, rtol=0)


def test_apply_fast_path_switches_and_compile_keeps_keys():
    cfg = detector_cfg("Base-RCNN-FPN.yaml", "MODEL.FUSE_CONV_BN_RELU", False)
    model = build_model(cfg)
    keys = list(model.state_dict())
    cfg.defrost()
    cfg.MODEL.FUSE_CONV_BN_RELU, cfg.MODEL.CHANNELS_LAST, cfg.MODEL.COMPILE = True, True, True
    model = apply_fast_path(model, cfg)  # compiles lazily: nothing runs here
    assert list(model.state_dict()) == keys
    assert model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(model.backbone.body.layer1[0].conv1, FoldedConv2d)


def test_to_channels_last_converts_the_backbone_input():
    model = build_model(detector_cfg("Base-RCNN-FPN.yaml"))
    to_channels_last(model)
    seen = {}
    model.backbone.body.conv1.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.inference_mode():
        model.eval()([{"image": batch()[0]["image"]}])
    assert seen["x"].is_contiguous(memory_format=torch.channels_last)


def test_device_meter_averages_without_per_step_sync():
    meter = DeviceMeter()
    meter.add({"loss": torch.tensor(1.0), "time": 0.5})
    meter.add({"loss": torch.tensor(3.0), "time": 1.5})
    assert meter.averages() == {"loss": 2.0, "time": 1.0}
    assert meter.averages() == {}  # reset after reading


def test_every_builder_applies_channels_last_itself():
    """MODEL.CHANNELS_LAST lives in the builders (the trainer, predictor and eval-only paths share them)."""
    from resnet_det.classification import build_classifier
    from resnet_det.localization.model import build_localizer

    cls = get_cfg()
    cls.merge_from_file(os.path.join(REPO, "configs", "demo", "cls_r18_demo.yaml"))
    cls.merge_from_list(["MODEL.CHANNELS_LAST", True, "INPUT.MEAN_MODE", "per_channel"])
    loc = get_cfg()
    loc.merge_from_file(os.path.join(REPO, "configs", "demo", "loc_R-18_demo.yaml"))
    loc.MODEL.CHANNELS_LAST = True
    for model in (build_classifier(cls).net, build_localizer(loc).net, build_model(detector_cfg("Base-RCNN-C4.yaml"))):
        conv1 = getattr(model, "backbone", None)
        weight = (conv1.body.conv1 if conv1 is not None else model.conv1).weight
        assert weight.is_contiguous(memory_format=torch.channels_last)


def test_private_internals_outside_checked_versions_fall_back_once(monkeypatch, caplog):
    """A newer torch (or a torchvision without the private pooler functions) runs the public ops:
    same outputs, one log line, no oneDNN fused calls, torchvision's MultiScaleRoIAlign."""
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops import poolers

    from resnet_det.utils import compat

    assert compat.private_internals_ok()  # the pinned stack is inside the checked range
    calls = []
    real = fusion._conv_relu
    monkeypatch.setattr(fusion, "_conv_relu", lambda *a: calls.append(1) or real(*a))
    for patch, reason in ((lambda m: m.setattr(torch, "__version__", "2.15.0"), "torch 2.15.0 is outside"),
                          (lambda m: m.delattr(poolers, "_setup_scales"), "has no _setup_scales")):
        with monkeypatch.context() as m:
            patch(m)
            m.setattr(compat, "_verdict", None)  # decide again, as a fresh process would
            caplog.clear()
            fused, plain = to_channels_last(net(50).eval()), net(50).eval()
            fuse_conv_bn_relu(fused)
            with torch.no_grad():
                for _ in range(2):
                    torch.testing.assert_close(fused(nhwc(x())), plain(x()), rtol=1e-4, atol=1e-4)
            model = build_model(detector_cfg("Base-RCNN-FPN.yaml"))
            assert type(model.roi_heads.box_roi_pool) is MultiScaleRoIAlign
            assert not calls
            logged = [r.getMessage() for r in caplog.records if "Fast path" in r.getMessage()]
            assert len(logged) == 1 and reason in logged[0], logged
    monkeypatch.setattr(compat, "_verdict", None)
    assert compat.private_internals_ok()  # and back on the real stack


def test_setup_bounds_agree_with_the_private_internals_gate():
    """setup.py's lowest torch/torchvision is where the gate's checked range starts (one minimum)."""
    import re

    from resnet_det.utils.compat import VERIFIED_VERSIONS

    text = open(os.path.join(REPO, "setup.py")).read()
    for lib in ("torch", "torchvision"):
        low = re.search(rf'"{lib}>=(\d+)\.(\d+)', text)
        assert low and (int(low[1]), int(low[2])) == VERIFIED_VERSIONS[lib][0], lib
    assert 'python_requires=">=3.10"' in text  # zip(strict=True) needs 3.10
