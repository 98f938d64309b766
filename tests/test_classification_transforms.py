"""The recipes' transforms: scale augmentation, crops, flips, PCA lighting, 10-crop (vs torchvision).
Images go in as HxWx3 arrays and come out as 3xHxW uint8 tensors (to_chw in between)."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from resnet_det.classification.transforms import TestTransform as EvalTransform
from resnet_det.classification.transforms import (IMAGENET_EIGVAL, IMAGENET_EIGVEC, TrainTransform,
                                                  center_crop, pca_lighting, random_crop, random_flip,
                                                  random_shorter_side, resize_shorter, ten_crops, to_chw)
from resnet_det.config import get_cfg


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _cfg(style="imagenet", **inp):
    cfg = get_cfg()
    cfg.MODEL.CLASSIFIER.STYLE = style
    for k, v in inp.items():
        cfg.INPUT[k] = v
    return cfg


def test_scale_augmentation_covers_the_range_and_keeps_aspect():
    img = _img(30, 45)
    sides = []
    for s in range(300):
        out = random_shorter_side(img, 40, 48, np.random.default_rng(s))
        h, w = out.shape[:2]
        sides.append(min(h, w))
        assert abs(w / h - 1.5) < 1.5 / h + 0.02  # aspect kept up to rounding
    assert set(sides) == set(range(40, 49))  # every integer of [lo, hi], endpoints included


def test_train_crop_is_a_window_of_the_rescaled_image():
    cfg = _img(40, 50)
    t = TrainTransform(_cfg(CROP_SIZE=24, SCALE_RANGE=(32, 40), RANDOM_FLIP_PROB=0.0, PCA_LIGHTING_STD=0.0))
    rng = np.random.default_rng(3)
    out = t(cfg, rng)
    assert out.shape == (3, 24, 24) and out.dtype == torch.uint8 and out.is_contiguous()
    # Replay the same draws: the shorter side, then the crop offset.
    replay = np.random.default_rng(3)
    resized = resize_shorter(cfg, int(replay.integers(32, 41)))
    y, x = int(replay.integers(0, resized.shape[0] - 23)), int(replay.integers(0, resized.shape[1] - 23))
    np.testing.assert_array_equal(out, resized[y:y + 24, x:x + 24].transpose(2, 0, 1))


def test_flip_probability_and_mirror():
    img = _img(8, 9)
    chw = to_chw(img)
    np.testing.assert_array_equal(random_flip(chw, 1.0, np.random.default_rng(0)), img[:, ::-1].transpose(2, 0, 1))
    np.testing.assert_array_equal(random_flip(chw, 0.0, np.random.default_rng(0)), img.transpose(2, 0, 1))
    flips = sum(random_flip(chw, 0.5, np.random.default_rng(s))[:, 0, 0].tolist() == img[0, -1].tolist()
                for s in range(400))
    assert 160 < flips < 240


def test_cifar_pad_crop_offsets_and_zero_border():
    img = np.full((32, 32, 3), 255, np.uint8)
    offsets = set()
    for s in range(200):
        out = random_crop(to_chw(img), 32, np.random.default_rng(s), pad=4).permute(1, 2, 0).numpy()
        assert out.shape == (32, 32, 3)
        zero_rows = int((out[:, :, 0] == 0).all(axis=1).sum())
        zero_cols = int((out[:, :, 0] == 0).all(axis=0).sum())
        offsets.add((zero_rows, zero_cols))
        assert zero_rows <= 4 and zero_cols <= 4 and out.max() == 255
    assert (0, 0) in offsets and any(r == 4 for r, _ in offsets) and any(c == 4 for _, c in offsets)


def test_pca_lighting_shift_statistics():
    grey = to_chw(np.full((4, 4, 3), 128, np.uint8))
    assert pca_lighting(grey, 0.0, np.random.default_rng(0)) is grey

    def hwc(t):
        return t.permute(1, 2, 0).numpy().astype(float)

    shifts = []
    for s in range(3000):
        out = hwc(pca_lighting(grey, 0.1, np.random.default_rng(s), image_format="RGB")) - 128
        assert np.ptp(out.reshape(-1, 3), axis=0).max() == 0  # one shift for the whole image
        shifts.append(out[0, 0])
    shifts = np.array(shifts)
    # Oracle: shift = 255 * V (alpha * lambda), alpha ~ N(0, 0.1^2) -> cov = V diag((0.1*255*lambda)^2) V^T.
    expected = IMAGENET_EIGVEC @ np.diag((0.1 * 255 * IMAGENET_EIGVAL) ** 2) @ IMAGENET_EIGVEC.T
    np.testing.assert_allclose(np.cov(shifts.T), expected, atol=0.6)  # rounding adds var 1/12 per channel
    # BGR images get the same shift with channels reversed.
    bgr = hwc(pca_lighting(grey, 0.1, np.random.default_rng(7), image_format="BGR")) - 128
    rgb = hwc(pca_lighting(grey, 0.1, np.random.default_rng(7), image_format="RGB")) - 128
    np.testing.assert_array_equal(bgr[0, 0], rgb[0, 0, ::-1])


def test_ten_crops_and_center_match_torchvision():
    # Even margins: torchvision's "center crop of the flipped image" is then our "flipped center crop".
    img = _img(38, 46)
    ours = ten_crops(to_chw(img), 30)
    tv = TF.ten_crop(torch.from_numpy(img).permute(2, 0, 1), 30)
    key = lambda a: a.numpy().tobytes()  # noqa: E731
    assert sorted(map(key, ours)) == sorted(map(key, tv))
    np.testing.assert_array_equal(ours[4], center_crop(to_chw(img), 30))
    np.testing.assert_array_equal(ours[9], ours[4].flip(-1))
    for h, w in ((37, 45), (38, 46), (31, 30)):  # odd margins too: the same rounding as torchvision
        odd = _img(h, w, 2)
        np.testing.assert_array_equal(center_crop(to_chw(odd), 30),
                                      TF.center_crop(torch.from_numpy(odd).permute(2, 0, 1), 30).numpy())
    # The last five are the reflections of the first five (Krizhevsky et al.'s 10 patches), which
    # torchvision's ten_crop is not where the margin is odd (its sixth..tenth crop the flipped image).
    odd_crops = ten_crops(to_chw(_img(37, 45, 3)), 30)
    for i in range(5):
        np.testing.assert_array_equal(odd_crops[5 + i], odd_crops[i].flip(-1))
    tv_odd = TF.ten_crop(to_chw(_img(37, 45, 3)), 30)
    assert not torch.equal(tv_odd[9], odd_crops[9])


def test_test_transform_protocols():
    img = _img(40, 60)
    cfg = _cfg(CROP_SIZE=28, TEST_RESIZE=32, SCALE_RANGE=(32, 40))
    assert EvalTransform(cfg, "center")(img).shape == (3, 28, 28)
    ten = EvalTransform(cfg, "10crop")(img)
    assert ten.shape == (10, 3, 28, 28)
    np.testing.assert_array_equal(ten[4], center_crop(to_chw(resize_shorter(img, 32)), 28))
    assert EvalTransform(cfg, "multiscale")(img).shape == (3, 40, 60)  # the model resizes it
    cif = _cfg("cifar", CROP_SIZE=32)
    np.testing.assert_array_equal(EvalTransform(cif, "center")(_img(32, 32, 1)), _img(32, 32, 1).transpose(2, 0, 1))


def test_config_errors_name_the_keys():
    with pytest.raises(ValueError, match="INPUT.CROP_SIZE=64 exceeds the smallest training scale"):
        TrainTransform(_cfg(CROP_SIZE=64, SCALE_RANGE=(32, 40)))
    with pytest.raises(ValueError, match="INPUT.SCALE_RANGE"):
        TrainTransform(_cfg(SCALE_RANGE=(40, 32)))
    with pytest.raises(ValueError, match="TEST.CLS_PROTOCOL='5crop'"):
        EvalTransform(_cfg(), "5crop")
    with pytest.raises(ValueError, match="INPUT.CROP_SIZE=300 exceeds INPUT.TEST_RESIZE=256"):
        EvalTransform(_cfg(CROP_SIZE=300))
