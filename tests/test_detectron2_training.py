"""configs/detectron2_zoo/ train as detectron2 does, step for step, with detectron2 itself as the oracle.

tests/data/d2_train_R_50_{FPN,C4}_1x.json (copied from ../shared/fixtures/detectron2/, whose README
describes them) hold one training step of detectron2's own model (commit 02b5c4e2, CPU) with weights
rebuilt by tests/seeded_weights.py, on a fixed two-image batch with exhaustive sampling
(BATCH_SIZE_PER_IMAGE 1000000): the four losses, every trainable gradient norm by detectron2's name,
the parameters it froze, its optimizer's lr and weight decay per parameter and its LR multiplier.
We save the weights as the model zoo ships them, load them through MODEL.WEIGHTS into the mirrored
config (the Trainer's own path: model, optimizer, scheduler), run the same step and compare: losses
within 1e-4, gradient norms within 2e-3 (relative; detectron2 itself varies 5e-4 between thread counts).
"""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from matplotlib import cbook
from seeded_weights import seeded_state_dict

from resnet_det.checkpoint.formats import save_detectron2_pkl
from resnet_det.checkpoint.layouts import convert_detector
from resnet_det.config import get_cfg
from resnet_det.engine import Trainer
from resnet_det.utils.benchmark import pretrained_like_norms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
LOSS_TOL, GRAD_RTOL = 1e-4, 2e-3
# detectron2's loss names -> torchvision's (which our model returns).
LOSS_NAMES = {"loss_cls": "loss_classifier", "loss_box_reg": "loss_box_reg",
              "loss_rpn_cls": "loss_objectness", "loss_rpn_loc": "loss_rpn_box_reg"}


def fixture(arch: str) -> dict:
    with open(os.path.join(DATA, f"d2_train_R_50_{arch}_1x.json"), encoding="utf-8") as f:
        return json.load(f)


def zoo_cfg(config: str, overrides, tmp_path, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "detectron2_zoo", config))
    # Both images' short side is 512: resized to 512 (scale 1), the model sees detectron2's pixels.
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"), *overrides,
                         "INPUT.MIN_SIZE_TRAIN", (512,), "INPUT.MAX_SIZE_TRAIN", 1333, *opts])
    return cfg


def fixture_batch(fix: dict) -> list[dict]:
    """The fixture's two images as the model takes them (BGR, CHW) with their boxes and 0-based classes."""
    photo = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # BGR, as detectron2 read it
    batch = []
    for spec, gt in zip(fix["images"], fix["gt"]):
        image = photo[spec["rows"][0]:spec["rows"][1]]
        if spec["mirrored"]:
            image = image[:, ::-1]
        assert list(image.shape[:2]) == spec["hw"]
        batch.append({"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                      "boxes": torch.tensor(gt["boxes_xyxy"], dtype=torch.float32),
                      "classes": torch.tensor(gt["classes"], dtype=torch.int64)})
    return batch


def d2_names(model, arch: str) -> dict[str, str]:
    """Our parameter name -> detectron2's, by the checkpoint converter's own key table."""
    sd = {k: p.detach() for k, p in model.named_parameters()}
    _, report = convert_detector(sd, f"resnet_det-{arch}", f"detectron2-{arch}")
    assert not report.unmatched, report.unmatched
    # The report names backbone (and C4 res5 head) keys as the ResNet converter saw them: without
    # the detector's prefix, the res5 head as the backbone's stage 5 (layer4.*).
    backbone = {"backbone.body.": "", "roi_heads.box_head.res5.": "layer4."}
    out = {}
    for name in sd:
        key = name
        for prefix, short in backbone.items():
            if name.startswith(prefix):
                key = short + name[len(prefix):]
        out[name] = report.converted[key]
    return out


def training_step(cfg, weights_path, batch):
    """Trainer(cfg) as tools/train_net.py builds it, MODEL.WEIGHTS loaded, one forward/backward."""
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights_path)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    model.train()
    torch.manual_seed(0)
    losses = model(batch)
    sum(losses.values()).backward()
    return trainer, {k: v.item() for k, v in losses.items()}


@pytest.mark.parametrize("arch", ["FPN", "C4"])
def test_one_training_step_equals_detectron2s(arch, tmp_path):
    fix = fixture(arch)
    weights = tmp_path / "model_final.pkl"
    # As the model zoo ships checkpoints: detectron2's exact names, numpy arrays, no heuristics flag.
    save_detectron2_pkl(str(weights), seeded_state_dict(fix["state_dict_shapes"]), author="Detectron2 Model Zoo",
                        matching_heuristics=False)
    trainer, losses = training_step(zoo_cfg(f"faster_rcnn_R_50_{arch}_1x.yaml", fix["overrides"], tmp_path),
                                    weights, fixture_batch(fix))
    model = trainer.model

    ours = {d2: losses[tv] for d2, tv in LOSS_NAMES.items()}
    print(f"\n{arch} losses ours {ours}\n{arch} losses detectron2 {fix['losses']}")
    wrong = {k: (ours[k], ref) for k, ref in fix["losses"].items() if not abs(ours[k] - ref) <= LOSS_TOL}
    assert not wrong, f"(ours, detectron2's): {wrong}"

    names = d2_names(model, arch)
    params = dict(model.named_parameters())
    trainable = {names[k] for k, p in params.items() if p.requires_grad}
    assert trainable == set(fix["grad_norms"])
    assert {names[k] for k, p in params.items() if not p.requires_grad} == set(fix["frozen"])
    worst = 0.0
    for ours_name, d2_name in names.items():
        if d2_name in fix["grad_norms"]:
            # Row permutations (RPN anchors, the background class) and the background box's zero
            # rows leave the norm unchanged.
            norm, ref = params[ours_name].grad.norm().item(), fix["grad_norms"][d2_name]
            rel = abs(norm - ref) / max(ref, 1e-12)
            worst = max(worst, rel)
            assert rel <= GRAD_RTOL, (d2_name, norm, ref)
    print(f"{arch}: {len(trainable)} gradient norms, worst relative difference {worst:.2e}")

    group_of = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    for ours_name, p in params.items():
        if p.requires_grad:
            ref = fix["optimizer"]["per_param"][names[ours_name]]
            g = group_of[id(p)]
            # initial_lr: the base lr the LR multiplier scales (detectron2's per-parameter "lr").
            assert (g["initial_lr"], g["weight_decay"]) == pytest.approx((ref["lr"], ref["weight_decay"]),
                                                                         rel=1e-12), ours_name
    assert {id(p) for p in params.values() if p.requires_grad} == set(group_of)
    assert type(trainer.optimizer).__name__ == fix["optimizer"]["type"]
    assert trainer.optimizer.defaults["momentum"] == fix["optimizer"]["momentum"]
    schedule = trainer.scheduler.lr_lambdas[0]
    for it, mult in fix["lr_multiplier"].items():
        assert schedule(int(it)) == pytest.approx(mult, rel=1e-9, abs=1e-12), it


def detectron2_lr_multiplier(solver, it: int) -> float:
    """detectron2's WarmupParamScheduler(MultiStepParamScheduler, linear warmup) as its LRMultiplier
    evaluates it (solver/build.py, fvcore's param_scheduler): the oracle for configs without a fixture."""
    mult = solver.GAMMA ** sum(it >= s for s in solver.STEPS)
    if it < solver.WARMUP_ITERS:
        alpha = it / solver.WARMUP_ITERS
        mult *= solver.WARMUP_FACTOR * (1 - alpha) + alpha
    return mult


@pytest.mark.parametrize("arch", ["FPN", "C4"])
def test_r101_3x_with_7_classes_trains_with_the_configured_normalizers(arch, tmp_path):
    """No detectron2 fixture for R-101: nothing in the step may be specific to R-50 or 80 classes. The
    R-101 3x zoo config with 7 classes builds every tensor under detectron2's names, freezes what
    detectron2 freezes, and divides its RPN losses by RPN.BATCH_SIZE_PER_IMAGE x images as configured:
    with exhaustive sampling, doubling the configured batch size halves both RPN losses exactly and
    leaves the RoI losses (divided by the RoIs sampled) unchanged."""
    fix = fixture(arch)
    batch = fixture_batch(fix)
    losses = {}
    for size in (1_000_000, 2_000_000):
        cfg = zoo_cfg(f"faster_rcnn_R_101_{arch}_3x.yaml", [], tmp_path / str(size), "MODEL.ROI_HEADS.NUM_CLASSES", 7,
                      "MODEL.RPN.BATCH_SIZE_PER_IMAGE", size, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", size,
                      "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "INPUT.MIN_SIZE_TRAIN", (256,))
        # 7 classes: detectron2's classes 39, 68, 53, 61 become 0..3
        small = [{**d, "classes": torch.arange(len(d["classes"])) + 2 * i} for i, d in enumerate(batch)]
        torch.manual_seed(0)  # the same random weights for both sizes
        trainer = Trainer(cfg)
        model = pretrained_like_norms(trainer.model).train()
        torch.manual_seed(0)
        out = model(small)
        losses[size] = {k: v.item() for k, v in out.items()}
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.RPN.LOSS_NORMALIZER == "batch_size"
    predictor = model.roi_heads.box_predictor
    assert (predictor.cls_score.out_features, predictor.bbox_pred.out_features) == (8, 32)
    one, two = losses[1_000_000], losses[2_000_000]
    for k in ("loss_objectness", "loss_rpn_box_reg"):
        assert two[k] == pytest.approx(one[k] / 2, rel=1e-6), (k, one, two)
    for k in ("loss_classifier", "loss_box_reg"):
        assert two[k] == pytest.approx(one[k], rel=1e-6), (k, one, two)

    names = d2_names(model, arch)  # every tensor has its detectron2 name (none unmatched)
    stages = {d2.split(".")[2 if arch == "FPN" else 1] for k, d2 in names.items()
              if not dict(model.named_parameters())[k].requires_grad}
    assert stages == {"stem", "res2"}  # FREEZE_AT 2, as detectron2
    if arch == "C4":  # res5 runs per region in the box head, and trains
        assert sum(d2.startswith("roi_heads.res5.") for d2 in names.values()) == 3 * 3 + 1
    assert max(int(d2.split(".")[-3]) for d2 in names.values() if ".res4." in d2) == 22  # 23 blocks in res4
    schedule = trainer.scheduler.lr_lambdas[0]
    s = cfg.SOLVER
    for it in (0, 1, 500, 999, 1000, s.STEPS[0] - 1, s.STEPS[0], s.STEPS[1] - 1, s.STEPS[1], s.MAX_ITER - 1):
        assert schedule(it) == pytest.approx(detectron2_lr_multiplier(s, it), rel=1e-9), it
    assert {g["initial_lr"] for g in trainer.optimizer.param_groups} == {0.02}
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {1e-4}
