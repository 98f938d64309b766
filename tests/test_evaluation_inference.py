"""inference_on_dataset, DatasetEvaluators, the rank-0 gather (2-process gloo) and build_evaluator."""
import json
import logging
import math
import uuid

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from resnet_det.evaluation import (ClassificationEvaluator, COCOEvaluator, DatasetEvaluator, DatasetEvaluators,
                                   LocalizationEvaluator, PascalVOCDetectionEvaluator, build_evaluator,
                                   inference_on_dataset)

CLASSES = ["a", "b"]


def make_data(n=6):
    """Dataset dicts and a detection 'loader' (batches of 2 contract inputs)."""
    g = torch.Generator().manual_seed(0)
    dicts, inputs = [], []
    for i in range(n):
        xy = (torch.rand(2, generator=g) * 40).tolist()
        box = [xy[0], xy[1], xy[0] + 20 + i, xy[1] + 15]
        dicts.append({"file_name": f"/x/{i}.jpg", "image_id": 100 + i, "height": 64, "width": 64,
                      "annotations": [{"bbox": box, "category_id": i % 2, "iscrowd": 0}]})
        inputs.append({"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "image_id": 100 + i,
                       "height": 64, "width": 64, "boxes": torch.tensor([box]), "classes": torch.tensor([i % 2])})
    return dicts, [inputs[i:i + 2] for i in range(0, n, 2)]


class BoxModel(nn.Module):
    """Predicts each image's gt box shifted by image index (so AP is neither 0 nor 100)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, batch):
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        outs = []
        for x in batch:
            shift = float(x["image_id"] - 100) * 2
            inst = {"boxes": x["boxes"] + torch.tensor([shift, 0, shift, 0]) * self.w,
                    "scores": torch.tensor([0.5 + 0.01 * x["image_id"] % 7]), "pred_classes": x["classes"].clone()}
            outs.append({"instances": inst, "loc": {"classes": inst["pred_classes"], "boxes": inst["boxes"],
                                                    "scores": inst["scores"]}})
        return outs


def test_inference_eval_mode_timing_and_results(caplog):
    dicts, loader = make_data()
    model = BoxModel().train()
    with caplog.at_level(logging.INFO):
        res = inference_on_dataset(model, loader, COCOEvaluator(dicts, CLASSES), log_every=2, num_warmup=1)
    assert model.training  # restored
    assert model.seen == [(False, True)] * 3  # eval mode, inference mode
    assert 0 < res["bbox"]["AP"] < 100
    assert "ETA=" in caplog.text and "Total inference time" in caplog.text and "s / img" in caplog.text

    # Same result fed by hand: inference_on_dataset adds nothing to the numbers.
    ev = COCOEvaluator(dicts, CLASSES)
    for b in loader:
        ev.process(b, BoxModel().eval()(b))
    assert ev.evaluate()["bbox"] == pytest.approx(res["bbox"], nan_ok=True)


def test_classification_batches_pass_images_only():
    seen = []

    def model(images):
        seen.append(images.shape)
        return torch.eye(3)[: images.shape[0]] * 5  # predicts classes 0, 1, ...

    model = _Wrap(model)
    loader = [(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 0]))]  # (images, labels)
    res = inference_on_dataset(model, loader, [ClassificationEvaluator(ks=(1, 2))])
    assert seen == [torch.Size([3, 1, 2, 2])]
    assert res["top1_acc"] == pytest.approx(200 / 3) and res["top2_acc"] == 100.0


class _Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _Const(DatasetEvaluator):
    def __init__(self, res):
        self.res = res

    def evaluate(self):
        return self.res


def test_evaluators_merge_and_refuse_duplicate_keys():
    assert DatasetEvaluators([_Const({"a": 1}), _Const({"b": 2})]).evaluate() == {"a": 1, "b": 2}
    with pytest.raises(KeyError, match="'a'"):
        DatasetEvaluators([_Const({"a": 1}), _Const({"a": 2})]).evaluate()


# ---- distributed: 2 processes on gloo, each with half the batches ------------------------------
def _worker(rank, store, out_file):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        dicts, loader = make_data()
        shard = loader[rank::2]  # rank 0: batches 0, 2; rank 1: batch 1
        evs = [COCOEvaluator(dicts, CLASSES), LocalizationEvaluator()]
        res = inference_on_dataset(BoxModel(), shard, evs)
        with open(f"{out_file}.{rank}", "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def test_gather_to_rank0_with_gloo(tmp_path):
    out = tmp_path / "res.json"
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "res.json.0").read_text())
    rank1 = json.loads((tmp_path / "res.json.1").read_text())
    assert rank1 == {}
    dicts, loader = make_data()
    single = inference_on_dataset(BoxModel(), loader,
                                  [COCOEvaluator(dicts, CLASSES), LocalizationEvaluator()])
    single = json.loads(json.dumps(single))  # NaN and key types as after the json round trip
    assert rank0.keys() == single.keys() == {"bbox", "loc"}
    for task in ("bbox", "loc"):
        assert rank0[task] == pytest.approx(single[task], nan_ok=True)
    assert 0 < rank0["bbox"]["AP"] < 100 and 0 < rank0["loc"]["top1_loc_err"] < 100


# ---- build_evaluator ----------------------------------------------------------------------------
@pytest.fixture
def register():
    from resnet_det.data import DatasetCatalog, MetadataCatalog
    from resnet_det.data.catalog import unregister

    names = []

    def reg(evaluator_type, **meta):
        name = f"_test_eval_{uuid.uuid4().hex[:8]}"
        dicts, _ = make_data()
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=CLASSES, evaluator_type=evaluator_type, **meta)
        names.append(name)
        return name

    yield reg
    for n in names:
        unregister(n)


def test_build_evaluator_by_type(register, tmp_path):
    from resnet_det.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    ev = build_evaluator(cfg, register("coco"), None)
    assert isinstance(ev, COCOEvaluator)
    assert (tmp_path / "inference" / "gt_coco_format.json").is_file()  # from dicts, in cfg.OUTPUT_DIR
    assert isinstance(build_evaluator(cfg, register("voc"), str(tmp_path)), PascalVOCDetectionEvaluator)
    assert isinstance(build_evaluator(cfg, register("classification"), str(tmp_path)), ClassificationEvaluator)
    assert isinstance(build_evaluator(cfg, register("localization"), str(tmp_path)), LocalizationEvaluator)
    bad = register("lvis")
    with pytest.raises(ValueError, match=rf"{bad}.*evaluator_type='lvis'.*coco, voc, classification"):
        build_evaluator(cfg, bad, str(tmp_path))


def test_build_evaluator_from_coco_json(tmp_path):
    """A json-registered set evaluates against its json, with its original (non-contiguous) ids."""
    from resnet_det.data import register_coco_instances
    from resnet_det.data.catalog import unregister

    cats = [{"id": 5, "name": "x"}, {"id": 9, "name": "y"}]  # contiguous 0, 1; y has no ground truth
    gt = {"images": [{"id": 1, "file_name": "1.jpg", "height": 50, "width": 50}], "categories": cats,
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [5, 5, 20, 10], "area": 200,
                           "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "images").mkdir()
    name = f"_test_eval_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(tmp_path / "gt.json"), str(tmp_path / "images"))
    try:
        ev = build_evaluator(None, name, str(tmp_path / "out"))
        ev.process([{"image_id": 1}], [{"instances": {"boxes": torch.tensor([[5., 5, 25, 15]]),
                                                      "scores": torch.tensor([0.9]),
                                                      "pred_classes": torch.tensor([0])}}])
        res = ev.evaluate()["bbox"]
    finally:
        unregister(name)
    assert res["AP"] == pytest.approx(100.0) and res["AP-x"] == pytest.approx(100.0)
    assert math.isnan(res["AP-y"])
    written = json.loads((tmp_path / "out" / "inference" / "coco_instances_results.json").read_text())
    assert [(r["category_id"], r["bbox"]) for r in written] == [(5, [5.0, 5.0, 20.0, 10.0])]
