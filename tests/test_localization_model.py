"""The per-class localization network (Appendix C): head layout, true-class-only losses, top-5 decoding,
and loading classification weights."""
import pytest
import torch
import torchvision
from torchvision.ops import box_iou

from resnet_det.checkpoint import load_model_weights
from resnet_det.config import get_cfg
from resnet_det.evaluation import LocalizationEvaluator
from resnet_det.modeling.backbone import ResNet
from resnet_det.localization import Localizer, PerClassRPNHead, build_localizer, cell_anchors, grid_anchors

K = 4  # classes in the tiny models here


def tiny_cfg(**over):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "Localizer"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = K
    cfg.MODEL.LOCALIZER.IN_FEATURE = "res4"
    cfg.MODEL.LOCALIZER.HEAD_CHANNELS = 16
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 8
    cfg.INPUT.TEST_RESIZE = 64
    for k, v in over.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def sample(label, boxes, size=64):
    g = torch.Generator().manual_seed(label * 7 + len(boxes))
    return {"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g), "label": label,
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "classes": torch.full((len(boxes),), label, dtype=torch.long), "height": size, "width": size,
            "image_id": label}


def test_head_per_class_shapes_and_layout():
    head = PerClassRPNHead(16, num_classes=5, num_anchors=3, conv_channels=8)
    x = torch.randn(2, 16, 4, 6)
    obj, deltas = head(x)
    assert obj.shape == (2, 5, 4 * 6 * 3) and deltas.shape == (2, 5, 4 * 6 * 3, 4)
    # Channel k*A + a at cell (y, x) is class k's objectness of anchor a there: index (y*W + x)*A + a.
    t = torch.relu(head.conv(x))
    raw_obj, raw_box = head.cls_logits(t), head.bbox_pred(t)
    n, k, a, y, xx = 1, 3, 2, 2, 5
    i = (y * 6 + xx) * 3 + a
    assert torch.equal(obj[n, k, i], raw_obj[n, k * 3 + a, y, xx])
    assert torch.equal(deltas[n, k, i], raw_box[n, (k * 3 + a) * 4:(k * 3 + a + 1) * 4, y, xx])
    assert head.class_rows(3) == slice(36, 48) and head.class_rows(3, "cls_logits") == slice(9, 12)
    # Anchors share the index: centre of cell (y, x) at stride 16, cell anchor a.
    cells = cell_anchors([32], [0.5, 1.0, 2.0])
    anchors = grid_anchors(cells, 4, 6, 16)
    assert anchors.shape == (4 * 6 * 3, 4)
    torch.testing.assert_close(anchors[i], cells[a] + torch.tensor([88.0, 40.0, 88.0, 40.0]))
    # Ratio is height / width, area stays size^2 (Faster R-CNN's anchors).
    w, h = cells[0, 2] - cells[0, 0], cells[0, 3] - cells[0, 1]
    torch.testing.assert_close((h / w, h * w), (torch.tensor(0.5), torch.tensor(1024.0)))


def test_built_model_output_shapes_and_names():
    model = build_localizer(tiny_cfg())
    assert {k.split(".")[0] for k in model.state_dict()} == {"net", "head"}
    names = {k[len("net."):] for k in model.state_dict() if k.startswith("net.")}
    assert names == set(torchvision.models.resnet18(num_classes=K).state_dict())
    obj, deltas = model.head(torch.zeros(1, 256, 4, 4))  # res4 of ResNet-18: 256 channels
    assert obj.shape == (1, K, 4 * 4 * 6) and deltas.shape == (1, K, 4 * 4 * 6, 4)


def test_only_the_true_class_gets_a_loss():
    model = build_localizer(tiny_cfg())
    batch = [sample(2, [[8, 8, 40, 48]]), sample(2, [[20, 4, 60, 30], [0, 30, 30, 64]])]
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_objectness", "loss_box_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    head = model.head
    for k in range(K):
        box_g = head.bbox_pred.weight.grad[head.class_rows(k)]
        obj_g = head.cls_logits.weight.grad[head.class_rows(k, "cls_logits")]
        if k == 2:
            assert box_g.abs().sum() > 0 and obj_g.abs().sum() > 0
        else:  # exactly zero, not merely small: other classes' outputs never enter the loss
            assert torch.count_nonzero(box_g) == 0 and torch.count_nonzero(obj_g) == 0
            assert torch.count_nonzero(head.bbox_pred.bias.grad[head.class_rows(k)]) == 0
    # Two images of two classes: exactly those two classes' rows are touched.
    model.zero_grad()
    sum(model([sample(1, [[8, 8, 40, 48]]), sample(3, [[4, 4, 60, 60]])]).values()).backward()
    touched = [k for k in range(K) if head.bbox_pred.weight.grad[head.class_rows(k)].abs().sum() > 0]
    assert touched == [1, 3]


def test_box_loss_is_zero_when_the_true_class_regresses_exactly():
    model = build_localizer(tiny_cfg())
    with torch.no_grad():  # every regressor outputs 0: decoded boxes equal their anchors
        model.head.bbox_pred.weight.zero_()
        model.head.bbox_pred.bias.zero_()
    f = 64 // model.stride
    anchors = grid_anchors(model.cell_anchors, f, f, model.stride)
    inside = (anchors[:, :2] >= 0).all(1) & (anchors[:, 2:] <= 64).all(1)
    gt = anchors[inside][0]
    # The positives are the anchors with IoU >= 0.7 with gt (and gt's best); only gt itself is
    # positive here iff no other anchor overlaps that much. A box equal to an anchor has zero target.
    others = box_iou(gt[None], anchors)[0]
    assert int((others >= 0.7).sum()) == 1
    losses = model([sample(1, [gt.tolist()])])
    assert losses["loss_box_reg"] == 0
    # Shift the gt off the anchor: the same zero regressor now costs a box loss.
    assert model([sample(1, [(gt + torch.tensor([3.0, 0, 3.0, 0])).tolist()])])["loss_box_reg"] > 0


def test_top5_decoding_and_metric():
    """A Localizer whose network outputs are fixed by hand: the top-5 classes come from the fc, each
    class's box from its own best anchor, mapped back to original pixels."""
    k = 6
    cells = cell_anchors([8], [1.0])  # one 8x8 anchor per position
    model = Localizer(ResNet(18, num_classes=k, out_features=["res4"]), PerClassRPNHead(4, k, 1), cells,
                      in_feature="res4", pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1], test_size=32)
    anchors = grid_anchors(cells, 4, 4, 8)  # centres (8i + 4, 8j + 4) in the 32x32 resized image
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0, 2.0]])  # ranking 1, 3, 4, 5, 2, (0)
    obj = torch.full((1, k, 16), -5.0)
    best = {0: 0, 1: 5, 2: 15, 3: 6, 4: 10, 5: 3}  # class -> its highest-objectness position
    for c, i in best.items():
        obj[0, c, i] = 1.0
    obj[0, 1, 9] = 0.5  # class 1's second best: ignored
    deltas = torch.zeros(1, k, 16, 4)
    deltas[0, 3, 6] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # class 3: shift its box by half a width
    deltas[0, 3, 2] = torch.tensor([9.0, 9.0, 0.0, 0.0])  # another anchor of class 3: not the best
    model.run = lambda x: (logits, obj, deltas, anchors)
    model.eval()
    # A 16x16 original image, resized to 32x32 (scale 2): boxes come back halved.
    out = model([{"image": torch.zeros(3, 16, 16, dtype=torch.uint8), "height": 16, "width": 16}])[0]
    loc = out["loc"]
    assert loc["classes"].tolist() == [1, 3, 4, 5, 2]
    torch.testing.assert_close(loc["scores"], logits[0].softmax(0)[[1, 3, 4, 5, 2]])
    expect = {c: anchors[i] / 2 for c, i in best.items()}
    expect[3] = (anchors[6] + torch.tensor([4.0, 0, 4.0, 0])) / 2  # dx 0.5 * width 8 = 4 px
    torch.testing.assert_close(loc["class_boxes"], torch.stack([expect[c] for c in range(k)]))
    torch.testing.assert_close(loc["boxes"], torch.stack([expect[c] for c in (1, 3, 4, 5, 2)]))
    assert torch.equal(out["instances"]["pred_classes"], loc["classes"])

    # The evaluator: the true class 4 is the 3rd guess and its box is right -> a top-5 hit, top-1 miss;
    # the oracle uses class 4's box too. Class 2 true (5th guess, right box): a top-5 hit at rank 4.
    ev = LocalizationEvaluator(k=(1, 5), distributed=False)
    ev.process([{"image_id": 0, "classes": torch.tensor([4]), "boxes": expect[4][None]},
                {"image_id": 1, "classes": torch.tensor([2]), "boxes": expect[2][None]},
                {"image_id": 2, "classes": torch.tensor([1]), "boxes": expect[4][None]}], [out, out, out])
    res = ev.evaluate()["loc"]
    # image 2: class 1 is guessed first but its box (class 1's) is elsewhere: a miss at every k.
    assert res["top1_loc_err"] == 100.0 and res["top5_loc_err"] == pytest.approx(100 / 3)
    assert res["top1_cls_err"] == pytest.approx(200 / 3) and res["oracle_loc_err"] == pytest.approx(100 / 3)


def test_load_classification_checkpoint(tmp_path):
    model = build_localizer(tiny_cfg())
    tv = torchvision.models.resnet18(num_classes=K)
    tv.fc.bias.data.uniform_()
    path = str(tmp_path / "cls.pth")
    torch.save({"model": {f"net.{k}": v for k, v in tv.state_dict().items()}}, path)  # a Classifier wrapper
    report = load_model_weights(model, path)
    for k, v in tv.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k
    assert not report["unused"] and not report["reinitialized"]
    assert len(report["loaded"]) == len(tv.state_dict())
    assert sorted(report["missing"]) == sorted(f"head.{k}" for k in model.head.state_dict())

    # ImageNet's 1000-class fc: everything else loads, the fc keeps its fresh init (reported).
    tv1000 = torchvision.models.resnet18()
    torch.save(tv1000.state_dict(), path)
    fc_before = model.net.fc.weight.clone()
    report = load_model_weights(model, path)
    assert torch.equal(model.net.fc.weight, fc_before)
    assert torch.equal(model.net.layer3[1].conv2.weight, tv1000.layer3[1].conv2.weight)
    assert sorted(r.split()[0] for r in report["reinitialized"]) == ["net.fc.bias", "net.fc.weight"]

    # detectron2 names are converted to torchvision's on the way in.
    from resnet_det.checkpoint.key_map import convert_state_dict

    d2, _ = convert_state_dict(tv.state_dict(), "torchvision", "detectron2")
    torch.save(d2, path)
    model2 = build_localizer(tiny_cfg())
    report = load_model_weights(model2, path)
    assert torch.equal(model2.net.layer2[0].downsample[1].running_var, tv.layer2[0].downsample[1].running_var)
    assert torch.equal(model2.net.conv1.weight, tv.conv1.weight)

    # A Localizer checkpoint loads whole, head included.
    torch.save({"model": model.state_dict()}, path)
    model3 = build_localizer(tiny_cfg())
    report = load_model_weights(model3, path)
    assert not report["missing"] and not report["unused"]
    assert torch.equal(model3.head.bbox_pred.weight, model.head.bbox_pred.weight)


def test_config_errors():
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE='GeneralizedRCNN'"):
        build_localizer(tiny_cfg(**{"MODEL.META_ARCHITECTURE": "GeneralizedRCNN"}))
    with pytest.raises(ValueError, match="MODEL.LOCALIZER.IN_FEATURE='res3'"):
        build_localizer(tiny_cfg(**{"MODEL.LOCALIZER.IN_FEATURE": "res3"}))
    with pytest.raises(ValueError, match="one list each"):
        build_localizer(tiny_cfg(**{"MODEL.ANCHOR_GENERATOR.SIZES": [[16], [32]]}))
    model = build_localizer(tiny_cfg())
    with pytest.raises(ValueError, match="equal image sizes"):
        model([sample(1, [[0, 0, 10, 10]]), sample(1, [[0, 0, 10, 10]], size=48)])
