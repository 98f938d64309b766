"""Reading and writing ResNet weights: torch .pth files, detectron2 / MSRA pickles, and their metadata.

Formats read:
  .pth/.pt  torch.save of a state dict, or of {"model": sd, "meta": {...}} / {"state_dict": sd}
  .pkl      detectron2's {"model": {name: ndarray}, "__author__": ..., "matching_heuristics": ...},
            MSRA/Caffe2's {"blobs": {name: ndarray}} (R-50.pkl, R-101.pkl), or a flat {name: ndarray}
Formats written: resnet_det's {"model": sd, "meta": meta} (torch.save) and detectron2's pickle.

Weights only make sense with the input they were trained on; the "meta" record says which.
"""
from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import torch

from ..utils.errors import MissingFileError, WeightsError
from ..utils.io import atomic_save, atomic_write
from .key_map import CONVENTIONS, ConversionReport, convert_state_dict, detect_convention
from .layouts import detect_layout, split_detector

logger = logging.getLogger(__name__)

META_KEYS = ("input_format", "pixel_mean", "pixel_std", "stride_in_1x1", "norm", "source")
_TV_META = {"input_format": "RGB", "pixel_mean": [123.675, 116.28, 103.53],
            "pixel_std": [58.395, 57.12, 57.375], "stride_in_1x1": False, "norm": "BN"}
# MSRA's Caffe2 nets: BGR, mean subtraction only, stride in the first 1x1 (as the paper), and BN
# reduced to scale/bias, so only FrozenBN reproduces them.
_MSRA_META = {"input_format": "BGR", "pixel_mean": [103.53, 116.28, 123.675],
              "pixel_std": [1.0, 1.0, 1.0], "stride_in_1x1": True, "norm": "FrozenBN"}
ACCEPTED_FORMATS = (".pth/.pt written by torch.save (a state dict, or {'model': ..., 'meta': ...} / "
                    "{'state_dict': ...}), or .pkl in detectron2's {'model': ...} format, MSRA's "
                    "{'blobs': ...} format (R-50.pkl) or a flat dict of numpy arrays")


def default_meta(convention: str) -> dict:
    """What weights named in `convention` expect when the file records nothing.

    torchvision/resnet_det names: torchvision's ImageNet recipe. msra and detectron2 names: MSRA's
    (detectron2's ImageNet weights R-50.pkl / R-101.pkl are MSRA's). Files written by
    tools/convert_weights.py carry the source's record, so this guess is only for foreign files.
    """
    if convention in ("torchvision", "resnet_det"):
        return {**_TV_META, "source": convention}
    if convention in ("msra", "detectron2"):
        return {**_MSRA_META, "source": convention}
    raise ValueError(f"convention={convention!r}: expected one of resnet_det, {', '.join(CONVENTIONS)}")


def check_meta(meta: dict, where: str = "meta") -> dict:
    """`meta` if it is a complete, sensible record; a WeightsError (a ValueError) naming the bad key otherwise."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise WeightsError(f"{where}: missing keys {missing}; a record has {', '.join(META_KEYS)} "
                           "(see resnet_det.checkpoint.default_meta)")
    if meta["input_format"] not in ("RGB", "BGR"):
        raise WeightsError(f"{where}: input_format={meta['input_format']!r}: expected 'RGB' or 'BGR'")
    for key in ("pixel_mean", "pixel_std"):
        if len(meta[key]) != 3 or not all(isinstance(v, (int, float)) for v in meta[key]):
            raise WeightsError(f"{where}: {key}={meta[key]!r}: expected 3 numbers (0-255 range)")
    if not isinstance(meta["stride_in_1x1"], bool):
        raise WeightsError(f"{where}: stride_in_1x1={meta['stride_in_1x1']!r}: expected true or false")
    return meta


def meta_mismatches(meta: dict, cfg) -> list[str]:
    """Where `cfg` feeds the weights differently from how they were trained, each with its fix."""
    found = []
    src = meta.get("source", "?")
    if cfg.INPUT.FORMAT != meta["input_format"]:
        found.append(f"INPUT.FORMAT={cfg.INPUT.FORMAT} but the weights ({src}) expect "
                     f"{meta['input_format']}: set INPUT.FORMAT {meta['input_format']}")
    for key, cfg_key in (("pixel_mean", "PIXEL_MEAN"), ("pixel_std", "PIXEL_STD")):
        if not np.allclose(list(getattr(cfg.MODEL, cfg_key)), meta[key], atol=1e-3):
            found.append(f"MODEL.{cfg_key}={list(getattr(cfg.MODEL, cfg_key))} but the weights ({src}) "
                         f"expect {meta[key]}: set MODEL.{cfg_key} \"{meta[key]}\"")
    if cfg.MODEL.RESNETS.STRIDE_IN_1X1 != meta["stride_in_1x1"] and cfg.MODEL.RESNETS.DEPTH >= 50:
        found.append(f"MODEL.RESNETS.STRIDE_IN_1X1={cfg.MODEL.RESNETS.STRIDE_IN_1X1} but the weights "
                     f"({src}) were trained with {meta['stride_in_1x1']}: set MODEL.RESNETS.STRIDE_IN_1X1 "
                     f"{meta['stride_in_1x1']}")
    return found


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


def read_checkpoint(path: str, *, trusted: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict of tensors, meta record or None) from any format in ACCEPTED_FORMATS."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise missing_weights_error(path)
    obj = _read_pickle(path, trusted) if path.endswith(".pkl") else _read_torch(path, trusted)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(obj).__name__}; "
                           f"accepted: {ACCEPTED_FORMATS}")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
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
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
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
