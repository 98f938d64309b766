"""Test protocols on a tiny model: center, 10-crop (softmax-averaged) and dense multi-scale."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnet_det.classification import Classifier, build_classification_test_loader, build_classifier
from resnet_det.classification.data import load_image_folder
from resnet_det.classification.model import resize_shorter_tensor
from resnet_det.classification.transforms import resize_shorter, ten_crops, to_chw
from resnet_det.config import get_cfg
from resnet_det.data import DatasetCatalog, make_classification_set, read_image
from resnet_det.evaluation import ClassificationEvaluator, inference_on_dataset
from resnet_det.modeling.backbone import ResNet

MEAN, STD = [100.0, 110.0, 120.0], [50.0, 55.0, 60.0]


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    root = make_classification_set(str(tmp_path_factory.mktemp("cls") / "set"), num_classes=4,
                                   train_per_class=1, val_per_class=3, image_size=40, seed=2)
    name = "eval_test_val"
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_image_folder(os.path.join(root, "val"))[0])
    return name, load_image_folder(os.path.join(root, "val"))[0]


def _cfg(protocol):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "Classifier", "MODEL.RESNETS.DEPTH", 18,
                         "MODEL.RESNETS.NORM", "BN", "MODEL.CLASSIFIER.NUM_CLASSES", 4,
                         "MODEL.PIXEL_MEAN", MEAN, "MODEL.PIXEL_STD", STD, "INPUT.CROP_SIZE", 32,
                         "INPUT.TEST_RESIZE", 36, "INPUT.SCALE_RANGE", (36, 40), "TEST.CLS_PROTOCOL", protocol,
                         "TEST.MULTISCALE_SIZES", (32, 48, 64), "SOLVER.IMS_PER_BATCH", 20,
                         "DATALOADER.NUM_WORKERS", 0])
    return cfg


def _model(protocol):
    torch.manual_seed(0)
    model = build_classifier(_cfg(protocol)).eval()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode differs from a fresh net
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _logits(model, chw_uint8):
    x = (torch.as_tensor(np.ascontiguousarray(chw_uint8)).float() - torch.tensor(MEAN).view(3, 1, 1)) \
        / torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        return model.net(x[None])[0]


def _expected_errors(scores, labels):
    scores, labels = torch.stack(scores), torch.tensor(labels)
    top1 = 100.0 * float((scores.argmax(1) != labels).float().mean())
    top2 = 100.0 * float(1 - (scores.topk(2, 1).indices == labels[:, None]).any(1).float().mean())
    return top1, top2


def test_ten_crop_evaluation_averages_softmax_over_the_crops(val_set):
    name, dicts = val_set
    model = _model("10crop")
    results = inference_on_dataset(model, build_classification_test_loader(_cfg("10crop"), name),
                                   ClassificationEvaluator(ks=(1, 2), distributed=False))
    scores = []
    for d in dicts:  # oracle: each of the 10 crops through the bare net, softmax, mean
        img = resize_shorter(read_image(d["file_name"]), 36)
        crops = ten_crops(to_chw(img), 32)
        scores.append(torch.stack([F.softmax(_logits(model, c), 0) for c in crops]).mean(0))
    top1, top2 = _expected_errors(scores, [d["label"] for d in dicts])
    assert results["top1_err"] == pytest.approx(top1) and results["top2_err"] == pytest.approx(top2)
    # The model's (N, 10, C) output is each crop's logits, in the loader's order.
    x, _ = next(iter(build_classification_test_loader(_cfg("10crop"), name)))
    with torch.no_grad():
        out = model(x)
    img = resize_shorter(read_image(dicts[1]["file_name"]), 36)
    expected = torch.stack([_logits(model, c) for c in ten_crops(to_chw(img), 32)])
    torch.testing.assert_close(out[1], expected, rtol=1e-4, atol=1e-4)
    # And the crops are not all alike: averaging matters (the center crop alone scores differently).
    center = torch.stack([_logits(model, c) for c in
                          ten_crops(to_chw(resize_shorter(read_image(dicts[0]["file_name"]), 36)), 32)])
    assert (center - center[4]).abs().max() > 1e-3


def test_multiscale_evaluation_is_dense_and_averages_scales(val_set):
    name, dicts = val_set
    model = _model("multiscale")
    assert model.test_sizes == (32, 48, 64)
    results = inference_on_dataset(model, build_classification_test_loader(_cfg("multiscale"), name),
                                   ClassificationEvaluator(ks=(1, 2), distributed=False))
    scores = []
    for d in dicts:
        img = torch.from_numpy(read_image(d["file_name"]).transpose(2, 0, 1).copy())[None].float()
        per_scale = [F.softmax(_logits(model, resize_shorter_tensor(img, s)[0]), 0) for s in (32, 48, 64)]
        scores.append(torch.stack(per_scale).mean(0))
    top1, top2 = _expected_errors(scores, [d["label"] for d in dicts])
    assert results["top1_err"] == pytest.approx(top1) and results["top2_err"] == pytest.approx(top2)
    x, _ = next(iter(build_classification_test_loader(_cfg("multiscale"), name)))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 3, 4)
    torch.testing.assert_close(out.softmax(-1).mean(1)[0], scores[0], rtol=1e-4, atol=1e-5)
    assert (out[0, 0] - out[0, 2]).abs().max() > 1e-3  # the scales do see different inputs


def test_global_pool_logits_equal_the_dense_fc_average():
    """The 'fully convolutional form' (Sec. 3.4): the fc applied at every position of the last map
    and averaged equals the net's logits, at any input size."""
    torch.manual_seed(0)
    net = ResNet(18, num_classes=5).eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        feats = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        dense = F.conv2d(feats, net.fc.weight[:, :, None, None], net.fc.bias)  # (2, 5, 3, 5) score map
        assert dense.shape[-2:] == (3, 5)
        torch.testing.assert_close(dense.mean(dim=(2, 3)), net(x), rtol=1e-4, atol=1e-5)


def test_normalisation_per_pixel_and_per_channel():
    net = torch.nn.Identity()
    mean_image = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 4, 4)
    m = Classifier(net, [0, 0, 0], [2, 2, 2], mean_image=mean_image).eval()
    x = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    torch.testing.assert_close(m.normalize(x), (100 - mean_image)[None] / 2)
    # Another size (multi-scale testing) subtracts the mean image's channel average.
    y = m.normalize(torch.full((1, 3, 6, 6), 100, dtype=torch.uint8))
    torch.testing.assert_close(y[0, :, 0, 0], (100 - mean_image.mean(dim=(1, 2))) / 2)
    # The buffers are not in the state dict: the checkpoint keys stay the net's (under "net.").
    full = Classifier(ResNet(18, num_classes=3), MEAN, STD, mean_image=torch.zeros(3, 8, 8))
    assert all(k.startswith("net.") for k in full.state_dict())


def test_train_mode_loss_and_errors():
    cfg = _cfg("center")
    model = build_classifier(cfg).train()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 3])
    out = model((x, y))
    assert set(out) == {"loss_cls"} and out["loss_cls"].requires_grad
    with pytest.raises(TypeError, match="images, labels"):
        model(x)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    with pytest.raises(ValueError, match="MODEL.RESNETS.NORM=FrozenBN"):
        build_classifier(cfg)
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.INPUT.MEAN_MODE = "per_pixel"
    with pytest.raises(ValueError, match="per_pixel needs the mean image"):
        build_classifier(cfg)
