"""Distributed evaluation through the real path (build_detection_test_loader -> inference_on_dataset ->
COCOEvaluator): 2 gloo processes shard a test set of 7 images (not divisible by 2) with batches of
TEST.IMS_PER_BATCH=2; every image is evaluated exactly once and rank 0 reports the AP of one process."""
import json
import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from resnet_det.config import get_cfg
from resnet_det.data import build_detection_test_loader, register_coco_instances
from resnet_det.data.catalog import unregister
from resnet_det.data.demo import generate_shapes_dataset
from resnet_det.evaluation import build_evaluator, inference_on_dataset

NAME = "dist_eval_shapes"
NUM_IMAGES = 7


class ShiftModel(nn.Module):
    """Predicts each image's ground-truth boxes shifted by a per-image amount (AP strictly between 0 and
    100, different for every image, so a lost or doubled image changes it); records the images seen."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen, self.batch_sizes = [], []

    def forward(self, batch):
        self.batch_sizes.append(len(batch))
        outs = []
        for x in batch:
            self.seen.append(int(x["image_id"]))
            shift = float(x["image_id"] % 4) * 3.0
            outs.append({"instances": {"boxes": x["boxes"] + torch.tensor([shift, 0, shift, 0]) * self.w,
                                       "scores": torch.full((len(x["boxes"]),), 0.3 + 0.05 * (x["image_id"] % 9)),
                                       "pred_classes": x["classes"].clone()}})
        return outs


def _evaluate(root, out_dir, ims_per_batch):
    register_coco_instances(NAME, {}, os.path.join(root, "annotations", "instances_val.json"), os.path.join(root, "val"))
    try:
        cfg = get_cfg()
        cfg.merge_from_list(["DATASETS.TEST", (NAME,), "TEST.IMS_PER_BATCH", ims_per_batch,
                             "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", out_dir, "MODEL.DEVICE", "cpu"])
        model = ShiftModel()
        loader = build_detection_test_loader(cfg, NAME)
        results = inference_on_dataset(model, loader, build_evaluator(cfg, NAME, output_dir=out_dir))
        return {"results": results, "seen": model.seen, "batch_sizes": model.batch_sizes, "len": len(loader)}
    finally:
        unregister(NAME)


def _worker(rank, store, root, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        out = _evaluate(root, out_dir, ims_per_batch=2)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(str(tmp_path_factory.mktemp("ds") / "shapes"), num_train=1,
                                   num_val=NUM_IMAGES, seed=11)


def test_two_ranks_evaluate_each_image_once(shapes, tmp_path):
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "store"), shapes, str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process evaluation hung")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    all_ids = sorted(img["id"] for img in json.load(open(os.path.join(shapes, "annotations", "instances_val.json")))
                     ["images"])
    assert len(all_ids) == NUM_IMAGES
    # contiguous shards of 4 and 3 images, batches of 2 (the last one of each shard may be short)
    assert len(r0["seen"]) == 4 and len(r1["seen"]) == 3
    assert sorted(r0["seen"] + r1["seen"]) == all_ids
    assert r0["batch_sizes"] == [2, 2] and r1["batch_sizes"] == [2, 1] and (r0["len"], r1["len"]) == (2, 2)
    assert r1["results"] == {}
    # rank 0 evaluated every image once: the results json it wrote has each image's detections once
    dets = json.load(open(tmp_path / "inference" / "coco_instances_results.json"))
    single = _evaluate(shapes, str(tmp_path / "single"), ims_per_batch=1)
    single_dets = json.load(open(tmp_path / "single" / "inference" / "coco_instances_results.json"))
    assert sorted({d["image_id"] for d in dets}) == all_ids
    def key(d):
        return d["image_id"], d["category_id"], tuple(round(v, 4) for v in d["bbox"])

    assert sorted(map(key, dets)) == sorted(map(key, single_dets))
    assert single["seen"] == all_ids and single["batch_sizes"] == [1] * NUM_IMAGES
    bbox, want = r0["results"]["bbox"], single["results"]["bbox"]
    assert 5 < want["AP"] < 95
    assert bbox.keys() == want.keys()
    assert bbox == pytest.approx(want, nan_ok=True)


def test_batched_inference_matches_one_at_a_time(tmp_path):
    """TEST.IMS_PER_BATCH 3 vs 1 on the demo detector (random weights, images of one size, so batching
    pads nothing): the same detections for every image, and every image once."""
    from resnet_det.data.demo import make_loader_benchmark_set
    from resnet_det.modeling.detector import build_model
    from resnet_det.utils.benchmark import pretrained_like_norms

    root = make_loader_benchmark_set(str(tmp_path / "set"), num_images=4, height=160, width=224, distinct=2)
    register_coco_instances("batch_eval_set", {}, os.path.join(root, "instances.json"), os.path.join(root, "images"))
    try:
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                         "demo", "frcnn_r18_fpn_shapes.yaml"))
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DATALOADER.NUM_WORKERS", 0,
                             "INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 224])
        torch.manual_seed(0)
        model = pretrained_like_norms(build_model(cfg)).eval()
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[1:3] += 6.0  # random weights that detect boxes
        outs = {}
        for batch in (1, 3):
            cfg.TEST.IMS_PER_BATCH = batch
            loader = build_detection_test_loader(cfg, "batch_eval_set")
            assert len(loader) == -(-4 // batch)
            got = {}
            with torch.inference_mode():
                for inputs in loader:
                    assert len(inputs) == min(batch, 4 - len(got))
                    for x, y in zip(inputs, model(inputs)):
                        got[int(x["image_id"])] = y["instances"]
            outs[batch] = got
        assert sorted(outs[1]) == sorted(outs[3]) == [1, 2, 3, 4]
        for i, one in outs[1].items():
            three = outs[3][i]
            assert len(one["boxes"]) > 0 and one["boxes"].shape == three["boxes"].shape
            torch.testing.assert_close(three["boxes"], one["boxes"], atol=1e-2, rtol=0)
            torch.testing.assert_close(three["scores"], one["scores"], atol=1e-4, rtol=0)
            assert torch.equal(three["pred_classes"], one["pred_classes"])
    finally:
        unregister("batch_eval_set")
