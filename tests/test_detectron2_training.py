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
