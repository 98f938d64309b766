"""Each detectron2 semantic switch (modeling/detector/detectron2_style.py) on its own, against the
detectron2 source line it reproduces (cited per test), and the torchvision default it replaces.
The end-to-end oracle is tests/test_detectron2_zoo.py; these pin down one difference each."""
import math
import os

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

from resnet_det.checkpoint import anchor_order, convert_heads
from resnet_det.config import get_cfg
from resnet_det.modeling.detector import build_model
from resnet_det.modeling.detector.detectron2_style import (StridedAnchorGenerator, detectron2_resized_size,
                                                           drop_empty_in_original)
from resnet_det.modeling.detector.heads import FastRCNNPredictor
from resnet_det.modeling.detector.pooling import Detectron2LevelMapper, FastMultiScaleRoIAlign

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES, RATIOS = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)


def d2_cell_anchors(sizes, ratios):
    """detectron2's DefaultAnchorGenerator.generate_cell_anchors (modeling/anchor_generator.py): size-major."""
    out = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size ** 2.0 / ratio)
            h = ratio * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(out).float()


def tiny(base: str, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", base))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.ROI_HEADS.NUM_CLASSES", 3, *opts])
    return build_model(cfg).eval()


def test_cell_anchors_are_detectron2s_in_torchvisions_order():
    ours = StridedAnchorGenerator((SIZES,), (RATIOS,), [16]).cell_anchors[0]
    order = anchor_order(len(SIZES), len(RATIOS))
    assert torch.equal(ours, d2_cell_anchors(SIZES, RATIOS)[order])  # exact: not rounded
    tv = AnchorGenerator((SIZES,), (RATIOS,)).cell_anchors[0]  # the order our RPN head's channels follow
    assert (ours - tv).abs().max() <= 0.5 and not torch.equal(ours, tv)


def test_anchor_grid_steps_by_the_backbone_stride_from_the_offset():
    """A 600-px side gives a 38-cell res4 map: detectron2 steps 16 px (its stride); torchvision divides
    the image by the map, 600 // 38 = 15 px."""
    images = ImageList(torch.zeros(1, 3, 600, 512), [(600, 512)])
    fmap = torch.zeros(1, 8, 38, 32)
    for offset in (0.0, 0.5):
        anchors = StridedAnchorGenerator(((32,),), ((1.0,),), [16], offset)(images, [fmap])[0]
        centres_y = (anchors[:, 1] + anchors[:, 3]).view(38, 32)[:, 0] / 2
        torch.testing.assert_close(centres_y, (torch.arange(38) + offset) * 16.0)
    tv = AnchorGenerator(((32,),), ((1.0,),))(images, [fmap])[0]
    assert ((tv[:, 1] + tv[:, 3]) / 2).max() == 37 * 15


def test_resize_rounding_is_detectron2s():
    # augmentation_impl.py ResizeShortestEdge.get_output_shape: int(x + 0.5) after the max-size clamp.
    assert detectron2_resized_size(480, 640, 800, 1333) == (800, 1067)
    assert detectron2_resized_size(500, 2000, 800, 1333) == (333, 1333)
    sizes = {}
    for rounding in ("floor", "round"):
        model = tiny("Base-RCNN-FPN.yaml", "INPUT.MIN_SIZE_TEST", 800, "INPUT.RESIZE_ROUNDING", rounding)
        sizes[rounding] = model.transform([torch.zeros(3, 480, 640)])[0].image_sizes[0]
    assert sizes == {"floor": (800, 1066), "round": (800, 1067)}


def rpn_filter(style: str, boxes, logits, min_size: float):
    model = tiny("Base-RCNN-C4.yaml", "MODEL.RPN.POSTPROCESS", style, "MODEL.RPN.MIN_SIZE", min_size)
    out, _ = model.rpn.filter_proposals(boxes[None], logits[None], [(100, 100)], [len(boxes)])
    return out[0]


def test_rpn_drops_only_empty_proposals_and_ranks_by_logits():
    # proposal_utils.py find_top_rpn_proposals: Boxes.nonempty(threshold=MIN_SIZE 0) is width, height > 0.
    normal, thin, empty = [10.0, 10.0, 50.0, 50.0], [60.0, 10.0, 90.0, 10 + 2 ** -11], [5.0, 60.0, 5.0, 90.0]
    boxes, logits = torch.tensor([normal, thin, empty]), torch.tensor([1.0, 2.0, 3.0])
    assert rpn_filter("detectron2", boxes, logits, 0.0).tolist() == [thin, normal]
    assert rpn_filter("torchvision", boxes, logits, 1e-3).tolist() == [normal]
    # NMS on logits: sigmoid(20) == sigmoid(25) == 1.0 in float32, a tie; the logits still rank them.
    a, b = [10.0, 10.0, 50.0, 50.0], [10.0, 10.0, 50.0, 50.5]
    assert rpn_filter("detectron2", torch.tensor([a, b]), torch.tensor([20.0, 25.0]), 0.0).tolist() == [b]


def test_box_postprocess_keeps_sub_hundredth_pixel_boxes_and_drops_empty_ones():
    """fast_rcnn.py fast_rcnn_inference_single_image keeps every box above the score threshold;
    torchvision's postprocess_detections drops sides under 1e-2 px."""
    proposals = [torch.tensor([[10.0, 10.0, 40.0, 10.005], [10.0, 20.0, 40.0, 60.0]])]
    logits = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]])  # class 0 and class 1 (0 = background)
    deltas = torch.zeros(2, 16)
    kept = {}
    for style in ("torchvision", "detectron2"):
        heads = tiny("Base-RCNN-C4.yaml", "MODEL.ROI_HEADS.POSTPROCESS", style).roi_heads
        boxes, _, labels = heads.postprocess_detections(logits, deltas, proposals, [(100, 100)])
        kept[style] = labels[0].tolist()
    assert kept == {"torchvision": [2], "detectron2": [1, 2]}
    # postprocessing.py detector_postprocess: clip to the original image, then drop empty boxes.
    dets = [{"boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0], [120.0, 5.0, 130.0, 9.0]]),
             "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}]
    out = drop_empty_in_original(dets, [(100, 100)])[0]
    assert out["labels"].tolist() == [1] and out["boxes"].tolist() == [[10.0, 10.0, 20.0, 20.0]]


def test_level_mapping_puts_detectron2s_eps_inside_the_log():
    """poolers.py assign_boxes_to_levels: floor(4 + log2(s / 224 + 1e-8)); torchvision adds 1e-6 to the log.
    They differ for a box just under a level boundary (side 112 * 2**-5e-7) and agree elsewhere."""
    sides = torch.tensor([112 * 2 ** -5e-7, 100.0, 112.0, 300.0, 460.0])
    boxes = [torch.stack([torch.zeros(5), torch.zeros(5), sides, sides], 1)]
    d2 = Detectron2LevelMapper(2, 5)(boxes)
    tv = LevelMapper(2, 5)(boxes)
    assert d2.tolist() == [0, 0, 1, 2, 3] and tv.tolist() == [1, 0, 1, 2, 3]


@pytest.mark.parametrize("gather", [True, False])
def test_roialignv2_is_roi_align_with_aligned_true(gather):
    g = torch.Generator().manual_seed(0)
    feats = {"p2": torch.randn(1, 4, 32, 32, generator=g), "p3": torch.randn(1, 4, 16, 16, generator=g)}
    boxes = [torch.tensor([[3.3, 4.1, 20.7, 30.2], [8.0, 8.5, 128.0, 127.0], [7.0, 7.0, 7.0, 9.0]])]
    pooler = FastMultiScaleRoIAlign(["p2", "p3"], 7, 0, aligned=True, gather=gather, strides=[4, 8],
                                    level_mapping="detectron2")
    out = pooler(feats, boxes, [(128, 128)])
    levels = Detectron2LevelMapper(2, 3)(boxes)
    assert levels.tolist() == [0, 1, 0]
    rois = torch.cat([torch.zeros(3, 1), boxes[0]], 1)
    for i, lvl in enumerate(levels.tolist()):
        ref = roi_align(list(feats.values())[lvl], rois[i:i + 1], 7, 1 / [4, 8][lvl], 0, aligned=True)
        torch.testing.assert_close(out[i:i + 1], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k,agnostic", [(5, False), (1, False), (5, True), (1, True)])
def test_predictor_conversion_keeps_every_probability_and_box(k, agnostic):
    """detectron2 (fast_rcnn.py): K+1 logits with background last, K x 4 deltas (4 when class-agnostic).
    Ours: background first, (K+1) x 4 deltas (4 when class-agnostic). Converted, our predictor module
    given the same input gives the same probability for every class and the same box deltas for every
    class; converted back, the same tensors. One class, class-aware: 4 rows in detectron2, like a
    class-agnostic head, told apart by the config (CLS_AGNOSTIC_BBOX_REG), not by the rows."""
    g = torch.Generator().manual_seed(0)
    rows = 4 if agnostic else 4 * k
    d2 = {"roi_heads.box_predictor.cls_score.weight": torch.randn(k + 1, 8, generator=g),
          "roi_heads.box_predictor.cls_score.bias": torch.randn(k + 1, generator=g),
          "roi_heads.box_predictor.bbox_pred.weight": torch.randn(rows, 8, generator=g),
          "roi_heads.box_predictor.bbox_pred.bias": torch.randn(rows, generator=g)}
    ours, _ = convert_heads(d2, "detectron2", "resnet_det", cls_agnostic=agnostic)
    predictor = FastRCNNPredictor(8, k + 1, agnostic)
    prefix = "roi_heads.box_predictor."
    predictor.load_state_dict({n[len(prefix):]: v for n, v in ours.items()}, strict=True)
    x = torch.randn(3, 8, generator=g)
    p_d2 = torch.softmax(x @ d2[prefix + "cls_score.weight"].T + d2[prefix + "cls_score.bias"], 1)
    box_d2 = x @ d2[prefix + "bbox_pred.weight"].T + d2[prefix + "bbox_pred.bias"]
    with torch.no_grad():
        logits, box_ours = predictor(x)
    torch.testing.assert_close(torch.softmax(logits, 1), torch.cat([p_d2[:, -1:], p_d2[:, :-1]], 1))
    for c in range(k):  # detectron2's class c is our class c + 1
        ref = box_d2[:, :4] if agnostic else box_d2[:, 4 * c:4 * c + 4]
        torch.testing.assert_close(box_ours[:, 4 * (c + 1):4 * (c + 2)], ref, rtol=1e-6, atol=1e-6)
    back, _ = convert_heads(ours, "resnet_det", "detectron2", cls_agnostic=agnostic)
    assert back.keys() == d2.keys() and all(torch.equal(back[n], d2[n]) for n in d2)


@pytest.mark.parametrize("base", ["Base-RCNN-C4.yaml", "Base-RCNN-FPN.yaml"])
def test_detectron2_style_detectors_train(base):
    """Training on the switches (anchors, aligned RoIAlign backward, proposal selection) runs, with the
    zoo configs' detectron2 losses (tests/test_detectron2_training.py compares them with detectron2's)."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "detectron2_zoo", base))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
                         "MODEL.BACKBONE.FREEZE_AT", 0, "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128,
                         "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32])
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 255, (3, 90, 120), dtype=torch.uint8, generator=g),
              "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "classes": torch.tensor([1])}]
    losses = model(batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.backbone.body.layer2[0].conv1.weight.grad.abs().sum() > 0
