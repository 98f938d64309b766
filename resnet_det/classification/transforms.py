"""The classification recipes' image transforms (Sec. 3.4 for ImageNet, Sec. 4.2 for CIFAR).

Images come in as HxWx3 uint8 arrays in INPUT.FORMAT channel order (cv2 decodes and resizes them) and
leave as 3xHxW uint8 tensors. The pixel work after resizing (pad, crop, flip, center and five crops) is
torchvision.transforms.v2.functional's; the random choices are drawn here from an explicit
``np.random.Generator``, not by v2's random transforms (they draw from torch's global RNG): the loaders
seed one generator per stream position, so a resumed run draws exactly what the uninterrupted one
would have. Normalisation (mean subtraction) happens in the model (``Classifier``), so images stay
uint8, cheap to pass between processes.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as F

# "Standard color augmentation" (Sec. 3.4, from Krizhevsky et al. 2012): PCA of ImageNet's RGB
# pixel values (0-1 range), as published with fb.resnet.torch. Rows of EIGVEC are R, G, B.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]])


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size`, keeping the aspect ratio (area filter when shrinking).

    cv2's filters, not v2.Resize: the images are cv2-decoded arrays, and v2's antialiased bilinear
    (and its truncated long side) gives other pixels."""
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


def to_chw(img: np.ndarray) -> torch.Tensor:
    """HxWx3 array -> 3xHxW uint8 tensor (a view of the array when it is contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


def random_crop(img: torch.Tensor, size: int, rng: np.random.Generator, pad: int = 0) -> torch.Tensor:
    """A random `size` x `size` crop of a CxHxW image, after zero-padding each side by `pad` (CIFAR, Sec. 4.2)."""
    if pad > 0:
        img = F.pad(img, [pad], fill=0)
    h, w = img.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} image: INPUT.CROP_SIZE must not exceed "
                         "the resized image (INPUT.SCALE_RANGE / INPUT.TEST_RESIZE)")
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return F.crop(img, y, x, size, size)


def random_flip(img: torch.Tensor, prob: float, rng: np.random.Generator) -> torch.Tensor:
    return F.horizontal_flip(img) if rng.uniform() < prob else img


def pca_lighting(img: torch.Tensor, std: float, rng: np.random.Generator, image_format: str = "BGR",
                 eigval: np.ndarray = IMAGENET_EIGVAL, eigvec: np.ndarray = IMAGENET_EIGVEC) -> torch.Tensor:
    """Add eigvec @ (alpha * eigval), alpha ~ N(0, std^2), to every pixel of a 3xHxW image (0-255 scale).

    The same RGB shift for the whole image, so colour and intensity change but not the content.
    Ours: torchvision has no PCA ("AlexNet-style") lighting; v2.ColorJitter changes other things.
    """
    if std <= 0:
        return img
    alpha = rng.normal(0.0, std, size=3)
    shift_rgb = 255.0 * eigvec @ (alpha * eigval)
    shift = shift_rgb[::-1] if image_format == "BGR" else shift_rgb
    shift = torch.tensor(shift.astype(np.float32)).view(3, 1, 1)
    return (img.float() + shift).clamp_(0, 255).round_().to(torch.uint8)


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if h < size or w < size:  # v2's crops would pad: here it is a config mistake
        raise ValueError(f"cannot center-crop {size}x{size} from a {h}x{w} image (INPUT.CROP_SIZE > "
                         "INPUT.TEST_RESIZE?)")
    return F.center_crop(img, [size, size])


def ten_crops(img: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The 10-crop test protocol (Sec. 3.4, from Krizhevsky et al.): the four corner crops and the
    center crop (v2's five_crop), then the mirror image of each. Not v2.ten_crop: its last five are
    crops of the flipped image, whose center crop is one column off the mirrored center crop when
    the margin is odd."""
    h, w = img.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot take {size}x{size} crops from a {h}x{w} image")
    five = list(F.five_crop(img, [size, size]))
    return five + [F.horizontal_flip(c) for c in five]


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

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.style == "cifar":
            chw = to_chw(resize_shorter(img, self.crop))  # the resize: a no-op on CIFAR itself (32x32)
            chw = random_crop(chw, self.crop, rng, pad=self.pad)
            chw = random_flip(chw, self.flip, rng)
        else:
            chw = to_chw(random_shorter_side(img, *self.scale_range, rng))
            chw = random_crop(chw, self.crop, rng)
            chw = random_flip(chw, self.flip, rng)
            chw = pca_lighting(chw, self.pca_std, rng, self.image_format)
        return chw.contiguous()


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

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        if self.protocol == "multiscale":
            return to_chw(img).contiguous()
        chw = to_chw(resize_shorter(img, self.resize if self.style == "imagenet" else self.crop))
        if self.protocol == "10crop":
            return torch.stack(ten_crops(chw, self.crop))
        return center_crop(chw, self.crop).contiguous()
