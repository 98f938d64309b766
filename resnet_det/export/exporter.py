"""Write TorchScript / ONNX files, the metadata JSON beside them, and run them back.

TorchScript: `torch.jit.trace`. torchvision's detection code has tracing paths (resize, anchors,
padding, top-k and box clipping read sizes as traced tensors), so a traced detector still accepts
any image size; `verify.py` checks that on a second image of another shape at every export.
Scripting is not used: the detector's forward takes list[dict] of mixed types and our backbones
build names with f-strings, which TorchScript's compiler rejects.

ONNX: the TorchScript-based exporter (`dynamo=False`), opset >= 11 for torchvision's RoIAlign/NMS
symbolics; height and width are dynamic axes. The torch.export-based exporter needs onnxscript and
static control flow around NMS's data-dependent output size, neither of which holds here.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings

import cv2
import numpy as np
import torch
import torchvision

from ..modeling.backbone import CifarResNet
from ..utils.errors import ConfigError, MissingFileError
from ..utils.io import atomic_write_text

FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
MIN_OPSET = 11  # torchvision registers roi_align / nms ONNX symbolics from opset 11
DEFAULT_OPSET = 17


def metadata_path(artifact: str) -> str:
    """`DIR/model.onnx` -> `DIR/model.onnx.json` (one per artifact, so both formats share a DIR)."""
    return artifact + ".json"


@contextlib.contextmanager
def _quiet_export():
    """torchvision's detection code warns at every shape read while tracing (TracerWarning), and
    torch warns that the TorchScript-based ONNX exporter is legacy; both are expected here. The
    ONNX exporter also warns that negative gather indices would break; torchvision's indices come
    from topk/nms/nonzero and are never negative (verification would catch it otherwise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*If indices include negative values.*")
        # torchvision's postprocess re-wraps traced sizes in torch.tensor(); harmless here.
        warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
        # Option A shortcuts (CIFAR nets, Table 3) subsample by x[..., ::2, ::2]: an ONNX Slice with
        # step 2, which the exporter cannot constant-fold and says so; the graph is still right.
        warnings.filterwarnings("ignore", message=".*Only steps=1 can be constant folded.*")
        yield


def io_names(model_type: str) -> tuple[list[str], list[str], dict]:
    """Input/output names and dynamic axes of the exported graph."""
    if model_type == "detector":
        return (["image"], ["boxes", "scores", "classes"],
                {"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                 "scores": {0: "detections"}, "classes": {0: "detections"}})
    return ["images"], ["logits"], {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}


def export_artifact(module: torch.nn.Module, example: torch.Tensor, fmt: str, output_dir: str,
                    model_type: str, opset: int = DEFAULT_OPSET) -> str:
    """Export `module` (a wrapper from wrappers.py) traced on `example`; returns the file path."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}: torchvision's RoIAlign and NMS need ONNX opset >= {MIN_OPSET}")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FORMATS[fmt])
    module = module.eval()
    with _quiet_export(), torch.no_grad():
        if fmt == "torchscript":
            # check_trace would only re-run the same input; verify.py checks another image size.
            torch.jit.trace(module, (example,), check_trace=False).save(path)
        else:
            inputs, outputs, axes = io_names(model_type)
            torch.onnx.export(module, (example,), path, opset_version=opset, dynamo=False,
                              input_names=inputs, output_names=outputs, dynamic_axes=axes)
    return path


def class_names_from_cfg(cfg, num_classes: int) -> list[str]:
    """thing_classes of the first registered test/train data set, else class0..class{K-1}."""
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        try:
            from ..data import MetadataCatalog

            names = MetadataCatalog.get(name).get("thing_classes", None)
        except Exception:  # an unregistered or unreadable set: fall back to generic names
            names = None
        if names and len(names) == num_classes:
            return list(names)
    return [f"class{i}" for i in range(num_classes)]


def input_normalization(cfg, model: torch.nn.Module) -> tuple[list[float], list[float]]:
    """(pixel_mean, pixel_std) in 0-255 that `model` uses: a classifier's own buffers (under a
    per-pixel mean, the mean image's channel average), the config's for a detector."""
    clf = getattr(model, "classifier", model)  # ClassifierExport or the Classifier itself
    if hasattr(clf, "net") and hasattr(clf, "pixel_mean"):
        return clf.pixel_mean.flatten().tolist(), clf.pixel_std.flatten().tolist()
    return list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)


def build_metadata(cfg, fmt: str, artifact: str, model_type: str, opset: int | None,
                   model: torch.nn.Module) -> dict:
    """Everything a deployment needs to feed the artifact and read its outputs. Classifier facts
    (depth, style, classes, mean) are read from the exported `model`, not from the config."""
    i, m = cfg.INPUT, cfg.MODEL
    inputs, outputs, axes = io_names(model_type)
    pixel_mean, pixel_std = input_normalization(cfg, model)
    meta = {
        "format": fmt, "file": os.path.basename(artifact), "model_type": model_type,
        "meta_architecture": m.META_ARCHITECTURE, "depth": m.RESNETS.DEPTH,
        "exporter": "torch.jit.trace" if fmt == "torchscript" else "torch.onnx.export(dynamo=False)",
        "opset": opset if fmt == "onnx" else None, "device": "cpu",
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "weights": m.WEIGHTS or None,
        "input": {"name": inputs[0], "dtype": "uint8", "value_range": [0, 255],
                  "channel_order": i.FORMAT, "pixel_mean": pixel_mean, "pixel_std": pixel_std,
                  "normalization": "inside the model: (x - pixel_mean) / pixel_std",
                  "dynamic_axes": {k: list(v.values()) for k, v in axes.items() if k == inputs[0]}},
        "outputs": outputs,
    }
    if model_type == "detector":
        h = m.ROI_HEADS
        meta["variant"] = "C4" if m.ROI_BOX_HEAD.NAME == "Res5ROIHead" else "FPN"
        meta["input"]["layout"] = "CHW (one image)"
        meta["size_rules"] = {"resize": "inside the model, shorter side to min_size unless the longer "
                                        "side would exceed max_size", "min_size": i.MIN_SIZE_TEST,
                              "max_size": i.MAX_SIZE_TEST, "any_input_size": True}
        meta["output_convention"] = {"boxes": "XYXY float32 in input-image pixels",
                                     "scores": "float32", "classes": "int64, 0..K-1 index class_names"}
        meta["fixed_at_export"] = {"score_thresh": h.SCORE_THRESH_TEST, "nms_thresh": h.NMS_THRESH_TEST,
                                   "detections_per_image": h.DETECTIONS_PER_IMAGE,
                                   "rpn_post_nms_topk": m.RPN.POST_NMS_TOPK_TEST}
        meta["class_names"] = class_names_from_cfg(cfg, h.NUM_CLASSES)
    else:
        clf = getattr(model, "classifier", model)
        net, mean_image = clf.net, clf.mean_image
        cifar = isinstance(net, CifarResNet)
        crop = int(i.CROP_SIZE)
        resize = crop if cifar else int(i.TEST_RESIZE)
        # depth 6n+2 for the Sec. 4.2 CIFAR nets, the Table 1 depth for the ImageNet ones
        meta.update(depth=int(net.depth), variant="cifar" if cifar else "imagenet",
                    num_classes=int(net.fc.out_features),
                    mean_mode="per_pixel" if mean_image is not None else "per_channel")
        meta["input"]["layout"] = "NCHW (a batch)"
        if mean_image is not None:
            h, w = mean_image.shape[-2:]
            meta["input"]["mean_image_shape"] = list(mean_image.shape)
            meta["input"]["normalization"] = (
                f"inside the model: (x - mean_image) / pixel_std for {h}x{w} inputs (the per-pixel mean of "
                "the training set, Sec. 3.4), (x - pixel_mean) / pixel_std at other sizes (pixel_mean = "
                "the mean image's channel average), as the eager Classifier")
        meta["size_rules"] = {"resize": "outside the model: shorter side to resize_shorter, then a "
                                        "center crop of crop_size", "resize_shorter": resize,
                              "crop_size": crop, "any_input_size": True}
        meta["output_convention"] = {"logits": "float32 (N, K); softmax for probabilities"}
        meta["class_names"] = class_names_from_cfg(cfg, meta["num_classes"])
    return meta


def write_metadata(meta: dict, artifact: str) -> str:
    # Atomic: never a half-written metadata file next to a good model.
    return atomic_write_text(metadata_path(artifact), json.dumps(meta, indent=2))


def read_metadata(artifact: str) -> dict:
    path = metadata_path(artifact)
    if not os.path.isfile(path):
        raise MissingFileError(f"{path!r} not found: an exported model needs the metadata JSON that "
                                "tools/export_model.py writes beside it (input convention, class names)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def preprocess(image_bgr: np.ndarray, meta: dict) -> np.ndarray:
    """A cv2 BGR HxWx3 uint8 image -> the uint8 array the artifact takes (CHW or 1xCHW)."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3 \
            or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image (cv2.imread), got "
                         f"{getattr(image_bgr, 'shape', type(image_bgr))} {getattr(image_bgr, 'dtype', '')}")
    img = image_bgr
    if meta["model_type"] == "classifier":
        img = resize_center_crop(img, meta["size_rules"]["resize_shorter"], meta["size_rules"]["crop_size"])
    if meta["input"]["channel_order"] == "RGB":
        img = img[:, :, ::-1]
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    return chw if meta["model_type"] == "detector" else chw[None]


def resize_center_crop(image: np.ndarray, shorter: int, crop: int) -> np.ndarray:
    """Shorter side to `shorter` (bilinear), then the central crop x crop (Sec. 3.4 test crop)."""
    h, w = image.shape[:2]
    s = shorter / min(h, w)
    nh, nw = max(crop, round(h * s)), max(crop, round(w * s))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    y, x = (nh - crop) // 2, (nw - crop) // 2
    return np.ascontiguousarray(image[y:y + crop, x:x + crop])


class ExportedModel:
    """Loads `DIR/model.ts` or `DIR/model.onnx` with its metadata and runs it on numpy arrays.

    Example::
        m = ExportedModel("out/model.onnx")
        boxes, scores, classes = m(preprocess(cv2.imread("a.jpg"), m.meta))
        m.predict(cv2.imread("a.jpg"))   # {"boxes", "scores", "classes"} or {"logits"}
    """

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise MissingFileError(f"--model {path!r}: no such file (export one with tools/export_model.py)")
        self.path, self.meta = path, read_metadata(path)
        self.format = self.meta["format"]
        if self.format == "torchscript":
            self._ts = torch.jit.load(path, map_location="cpu").eval()
        elif self.format == "onnx":
            import onnxruntime as ort

            self._ort = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self._input = self._ort.get_inputs()[0].name
        else:
            raise ValueError(f"{metadata_path(path)}: format {self.format!r} is not one of {', '.join(FORMATS)}")

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def __call__(self, array: np.ndarray) -> tuple[np.ndarray, ...]:
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
            raise ValueError(f"{self.path}: input must be a uint8 0-255 numpy array (metadata input.dtype), "
                             f"got {getattr(array, 'dtype', type(array).__name__)}")
        ndim = 3 if self.meta["model_type"] == "detector" else 4
        if array.ndim != ndim or array.shape[-3] != 3:
            raise ValueError(f"{self.path}: input must be {self.meta['input']['layout']} with 3 channels in "
                             f"{self.meta['input']['channel_order']} order, got shape {array.shape}; "
                             "preprocess(image_bgr, meta) makes it from a cv2 image")
        array = np.ascontiguousarray(array)  # torch.from_numpy rejects negative strides (img[..., ::-1])
        if self.format == "onnx":
            return tuple(self._ort.run(None, {self._input: array}))
        with torch.no_grad():
            out = self._ts(torch.from_numpy(array))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.numpy() for o in out)

    def predict(self, image_bgr: np.ndarray) -> dict:
        outs = self(preprocess(image_bgr, self.meta))
        return dict(zip(self.meta["outputs"], outs))
