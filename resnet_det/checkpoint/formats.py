"""Reading and writing weights files: torch .pth files, detectron2 / MSRA pickles, their meta record.

Formats read:
  .pth/.pt  torch.save of a state dict, or of {"model": sd, "meta": {...}} / {"state_dict": sd}
  .pkl      detectron2's {"model": {name: ndarray}, "__author__": ..., "matching_heuristics": ...},
            MSRA/Caffe2's {"blobs": {name: ndarray}} (R-50.pkl, R-101.pkl), or a flat {name: ndarray}
Formats written (atomically): resnet_det's {"model": sd, "meta": meta} (torch.save), detectron2's
pickle and MSRA's. Pickles are read without running code (numpy arrays only) unless trusted; torch
files with torch.load(weights_only=True).
"""
from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import torch

from ..utils.errors import MissingFileError, WeightsError
from ..utils.io import atomic_save, atomic_write
from .key_map import ConversionReport, convert_state_dict
from .layouts import detect_convention, detect_layout, split_detector
from .meta import check_meta, default_meta

logger = logging.getLogger(__name__)

# Saved from a wrapper: DistributedDataParallel (module.), the Classifier (net.), others' (model.).
_WRAPPER_PREFIXES = ("module.", "net.", "model.")
# The marker of a calibrated INT8 detector (modeling/precision.py save_int8, tools/quantize.py):
# {"format": INT8_FORMAT, "model": quantized state dict, "meta": {..., "precision": "int8", "calibration": ...}}.
INT8_FORMAT = "resnet_det_int8"
ACCEPTED_FORMATS = (".pth/.pt written by torch.save (a state dict, or {'model': ..., 'meta': ...} / "
                    "{'state_dict': ...}), or .pkl in detectron2's {'model': ...} format, MSRA's "
                    "{'blobs': ...} format (R-50.pkl) or a flat dict of numpy arrays")


def missing_weights_error(path: str) -> MissingFileError:
    from torchvision.models import ResNet50_Weights

    return MissingFileError(
        f"weights file {path!r} does not exist. Accepted formats: {ACCEPTED_FORMATS}. To obtain "
        "ImageNet weights when online, torchvision's are e.g. ResNet50_Weights.IMAGENET1K_V1 "
        f"({ResNet50_Weights.IMAGENET1K_V1.url}), fetched by torch.hub.load_state_dict_from_url(url) "
        "and saved with torch.save; weights in another naming (detectron2, MSRA R-50.pkl) are "
        "converted by `python tools/convert_weights.py --input X --output Y --to resnet_det`.")


# Pickle can run arbitrary code; weight pickles only need numpy arrays (and Python 2's copy_reg).
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS and not module.startswith("numpy.dtypes"):
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: weight pickles hold "
                                         "only numpy arrays (pickle can run code)")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = module.replace("numpy.core", "numpy._core", 1)  # numpy 1.x pickles on numpy 2
        return super().find_class(module, name)


def _read_pickle(path: str, trusted: bool) -> dict:
    with open(path, "rb") as f:
        try:
            # latin1: MSRA's pickles come from Python 2 (their arrays are byte strings).
            return (pickle.load(f, encoding="latin1") if trusted
                    else _ArrayUnpickler(f, encoding="latin1").load())
        except pickle.UnpicklingError as e:
            raise WeightsError(f"{path}: {e}. If you trust this file, pass trusted=True "
                               "(tools/convert_weights.py --trusted).") from None
        except EOFError:
            raise WeightsError(f"{path}: the pickle ends early (a truncated download or copy?); "
                               f"accepted: {ACCEPTED_FORMATS}") from None


def _read_torch(path: str, trusted: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path}: holds more than tensors and plain containers, so torch.load("
                           f"weights_only=True) refused it ({str(e).splitlines()[0]}). If you trust this "
                           "file, pass trusted=True (tools/convert_weights.py --trusted).") from None
    except (RuntimeError, EOFError) as e:  # torch's zip reader on a cut-off or foreign file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path}: torch.load cannot read it ({first}): a truncated download or copy, "
                           f"or not a torch file? Accepted: {ACCEPTED_FORMATS}") from None


def read_checkpoint(path: str, *, trusted: bool = False, ema: bool = False, int8_meta_only: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict of tensors, meta record or None) from any format in ACCEPTED_FORMATS; a wrapper's
    prefix shared by every key (module., net., model.) is removed. With ``ema``, a training checkpoint
    that holds a weights EMA (MODEL_EMA: {"ema": AveragedModel state}) gives the EMA's weights.

    A calibrated INT8 checkpoint (INT8_FORMAT) is not float weights: refused with a message, or with
    ``int8_meta_only`` read as ({}, its meta) for the input conventions it records."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise missing_weights_error(path)
    obj = _read_pickle(path, trusted) if path.endswith(".pkl") else _read_torch(path, trusted)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(obj).__name__}; "
                           f"accepted: {ACCEPTED_FORMATS}")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
    if obj.get("format") == INT8_FORMAT:
        if int8_meta_only:
            return {}, (check_meta(meta, f"{path}: meta") if meta is not None else None)
        raise WeightsError(f"{path} is a calibrated INT8 checkpoint (tools/quantize.py); it runs only with "
                           "TEST.PRECISION int8 (predictor, --eval-only, tools/visualize.py). For fp32/bf16, "
                           "training or export give MODEL.WEIGHTS the float weights it was quantized from")
    if ema and isinstance(obj.get("ema"), dict):
        averaged = obj["ema"]
        logger.info("%s: using its EMA weights (MODEL_EMA; %d updates), not the last trained ones", path,
                    int(averaged.get("n_averaged", -1)))
        obj = {"model": {k[len("module."):]: v for k, v in averaged.items() if k.startswith("module.")}}
    for wrapper in ("model", "state_dict", "blobs"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    sd, skipped = {}, []
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            sd[key] = value
        elif isinstance(value, (np.ndarray, np.generic)):
            sd[key] = torch.from_numpy(np.array(value, copy=True))
        else:
            skipped.append(key)
    if skipped:
        logger.warning("%s: %d entries are not arrays and were not read: %s", path, len(skipped),
                       ", ".join(map(str, skipped[:10])))
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd, (check_meta(meta, f"{path}: meta") if meta is not None else None)


def save_resnet_det(path: str, sd: dict, meta: dict) -> None:
    """resnet_det's checkpoint: {"model": state dict (torchvision names), "meta": record}."""
    record = {"model": {k: v.detach().cpu() for k, v in sd.items()}, "meta": check_meta(dict(meta))}
    atomic_save(record, path)


def save_detectron2_pkl(path: str, sd: dict, meta: dict | None = None, author: str = "resnet_det",
                        matching_heuristics: bool = True) -> None:
    """detectron2's pickle: numpy arrays; matching_heuristics lets its checkpointer match our
    prefix-less names (res2.0.conv1.weight) to its own (backbone.bottom_up.res2...) by suffix. A whole
    detector under detectron2's exact names is written without it, as the model zoo's files are."""
    record = {"model": {k: v.detach().cpu().numpy() for k, v in sd.items()}, "__author__": author}
    if matching_heuristics:
        record["matching_heuristics"] = True
    if meta is not None:  # detectron2 ignores extra top-level keys
        record["meta"] = check_meta(dict(meta))
    _write_pickle(path, record)


def save_msra_pkl(path: str, sd: dict, meta: dict) -> None:
    """Caffe2's layout, as MSRA's R-50.pkl ({"blobs": numpy arrays} under msra names, BN already folded
    into scale/bias by key_map); detectron2 reads it with its Caffe2 name heuristics."""
    _write_pickle(path, {"blobs": {k: v.detach().cpu().numpy() for k, v in sd.items()},
                         "meta": check_meta(dict(meta))})


def _write_pickle(path: str, record: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(record, f, protocol=4)  # readable by every Python 3 detectron2 supports

    atomic_write(path, write)


def load_backbone_weights(path: str, convention: str = "torchvision", *, trusted: bool = False
                          ) -> tuple[dict[str, torch.Tensor], dict, ConversionReport]:
    """Any weights file -> (backbone/classifier state dict named in `convention`, meta, report).

    Whole-detector checkpoints give their backbone (C4: with res5 from the box head); what else
    they hold is listed in `report.unmatched`. Meta is the file's record or `default_meta` of the
    detected naming.
    """
    sd, meta = read_checkpoint(path, trusted=trusted)
    rest = {}
    layout = detect_layout(sd)
    if layout is not None:
        sd, rest = split_detector(sd, layout)
    src = detect_convention(sd)
    out, report = convert_state_dict(sd, src, convention, log=False)
    report.unmatched += list(rest)
    report.log()
    return out, meta if meta is not None else default_meta(src), report
