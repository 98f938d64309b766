"""The classification recipes' image transforms (Sec. 3.4 for ImageNet, Sec. 4.2 for CIFAR).

Every transform takes an HxWx3 uint8 array in INPUT.FORMAT channel order and, when random, an
explicit ``np.random.Generator``: the loaders seed one per stream position, so a resumed run
draws exactly what the uninterrupted one would have. Normalisation (mean subtraction) happens in
the model (``Classifier``), so arrays stay uint8 here, cheap to pass between processes.
"""
from __future__ import annotations

import cv2
import numpy as np

# "Standard color augmentation" (Sec. 3.4, from Krizhevsky et al. 2012): PCA of ImageNet's RGB
# pixel values (0-1 range), as published with fb.resnet.torch. Rows of EIGVEC are R, G, B.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]])


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size`, keeping the aspect ratio (area filter when shrinking)."""
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    scale = size / min(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (new_w, new_h), interpolation=interp)


def random_shorter_side(img: np.ndarray, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Scale augmentation (Sec. 3.4): shorter side drawn uniformly from the integers in [lo, hi]."""
    return resize_shorter(img, int(rng.integers(lo, hi + 1)))


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator, pad: int = 0) -> np.ndarray:
    """A random `size` x `size` crop, after zero-padding each side by `pad` (CIFAR, Sec. 4.2)."""
    if pad > 0:
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} image: INPUT.CROP_SIZE must not exceed "
                         "the resized image (INPUT.SCALE_RANGE / INPUT.TEST_RESIZE)")
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[y:y + size, x:x + size]


def random_flip(img: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    return img[:, ::-1] if rng.uniform() < prob else img


def pca_lighting(img: np.ndarray, std: float, rng: np.random.Generator, image_format: str = "BGR",
                 eigval: np.ndarray = IMAGENET_EIGVAL, eigvec: np.ndarray = IMAGENET_EIGVEC) -> np.ndarray:
    """Add eigvec @ (alpha * eigval), alpha ~ N(0, std^2), to every pixel (0-255 scale).

    The same RGB shift for the whole image, so colour and intensity change but not the content.
    """
    if std <= 0:
        return img
    alpha = rng.normal(0.0, std, size=3)
    shift_rgb = 255.0 * eigvec @ (alpha * eigval)
    shift = shift_rgb[::-1] if image_format == "BGR" else shift_rgb
    return np.clip(img.astype(np.float32) + shift.astype(np.float32), 0, 255).round().astype(np.uint8)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop {size}x{size} from a {h}x{w} image (INPUT.CROP_SIZE > "
                         "INPUT.TEST_RESIZE?)")
    # torchvision's rounding of the offset, so its center_crop / ten_crop agree pixel for pixel.
    y, x = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img[y:y + size, x:x + size]


def ten_crops(img: np.ndarray, size: int) -> list[np.ndarray]:
    """The 10-crop test protocol (Sec. 3.4, from Krizhevsky et al.): the four corner crops and the
    center crop, then the same five of the flipped image."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot take {size}x{size} crops from a {h}x{w} image")
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    crops = [img[y:y + size, x:x + size] for y, x in corners] + [center_crop(img, size)]
    return crops + [c[:, ::-1] for c in crops]


def to_chw_tensor_array(img: np.ndarray) -> np.ndarray:
    """HxWx3 -> contiguous 3xHxW uint8."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


class TrainTransform:
    """The training recipe from the config.

    imagenet: shorter side in INPUT.SCALE_RANGE, random CROP_SIZE crop, flip, PCA lighting.
    cifar: pad INPUT.PAD, random CROP_SIZE crop, flip (Sec. 4.2; no scale or colour augmentation).
    Images of another size (the generated demo set) are first resized to CROP_SIZE.
    """

    def __init__(self, cfg):
        i = cfg.INPUT
        self.style = cfg.MODEL.CLASSIFIER.STYLE
        self.crop, self.pad, self.flip = int(i.CROP_SIZE), int(i.PAD), float(i.RANDOM_FLIP_PROB)
        self.scale_range = tuple(int(s) for s in i.SCALE_RANGE)
        self.pca_std, self.image_format = float(i.PCA_LIGHTING_STD), i.FORMAT
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"INPUT.SCALE_RANGE={tuple(i.SCALE_RANGE)}: expected (low, high) with 0 < low <= high")
        if self.style == "imagenet" and self.crop > self.scale_range[0]:
            raise ValueError(f"INPUT.CROP_SIZE={self.crop} exceeds the smallest training scale "
                             f"INPUT.SCALE_RANGE[0]={self.scale_range[0]}; a crop must fit (paper: 224 in [256, 480])")

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.style == "cifar":
            img = resize_shorter(img, self.crop)  # a no-op on CIFAR itself (32x32)
            img = random_crop(img, self.crop, rng, pad=self.pad)
            img = random_flip(img, self.flip, rng)
        else:
            img = random_shorter_side(img, *self.scale_range, rng)
            img = random_crop(img, self.crop, rng)
            img = random_flip(img, self.flip, rng)
            img = pca_lighting(img, self.pca_std, rng, self.image_format)
        return to_chw_tensor_array(img)


class TestTransform:
    """The test protocols: "center" -> 3xSxS; "10crop" -> 10x3xSxS; "multiscale" -> the whole image
    (the model resizes it to each TEST.MULTISCALE_SIZES and averages, Table 4 protocol).

    imagenet: resize the shorter side to INPUT.TEST_RESIZE first (256 in the paper); cifar: the
    32x32 image itself ("the single view of the original 32x32 image", Sec. 4.2)."""

    def __init__(self, cfg, protocol: str | None = None):
        self.protocol = protocol or cfg.TEST.CLS_PROTOCOL
        if self.protocol not in ("center", "10crop", "multiscale"):
            raise ValueError(f"TEST.CLS_PROTOCOL={self.protocol!r}: expected one of center, 10crop, multiscale")
        self.style, self.crop = cfg.MODEL.CLASSIFIER.STYLE, int(cfg.INPUT.CROP_SIZE)
        self.resize = int(cfg.INPUT.TEST_RESIZE)
        if self.style == "imagenet" and self.crop > self.resize:
            raise ValueError(f"INPUT.CROP_SIZE={self.crop} exceeds INPUT.TEST_RESIZE={self.resize}")

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.protocol == "multiscale":
            return to_chw_tensor_array(img)
        img = resize_shorter(img, self.resize if self.style == "imagenet" else self.crop)
        if self.protocol == "10crop":
            return np.stack([to_chw_tensor_array(c) for c in ten_crops(img, self.crop)])
        return to_chw_tensor_array(center_crop(img, self.crop))
