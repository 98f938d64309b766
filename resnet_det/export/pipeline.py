"""Export a configured model, run the artifact back, and compare it with eager PyTorch."""
from __future__ import annotations

import logging

import numpy as np
import torch

from .exporter import (DEFAULT_OPSET, ExportedModel, build_metadata, export_artifact, input_normalization,
                       preprocess, write_metadata)
from .verify import Tolerance, compare_detections, compare_logits, generated_image, second_shape, summarize
from .wrappers import build_eager_model, make_export_module, model_type_of

logger = logging.getLogger(__name__)


class ExportMismatchError(RuntimeError):
    """The exported model's outputs differ from eager PyTorch's beyond the tolerance."""


def _eager_outputs(module: torch.nn.Module, array: np.ndarray) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(array)))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return tuple(o.numpy() for o in out)


def verify_exported(cfg, eager: torch.nn.Module, exported: ExportedModel, images: list[np.ndarray],
                    tol: Tolerance = Tolerance()) -> dict:
    """Run eager and exported models on each BGR image and compare (see verify.compare_*).

    Both get the array `preprocess` makes from the artifact's metadata, so a metadata convention
    that disagrees with the config (e.g. BGR vs RGB) is caught first, as a mismatch of its own.
    """
    meta, model_type = exported.meta, model_type_of(cfg)
    problems = []
    if meta["model_type"] != model_type:
        problems.append(f"artifact is a {meta['model_type']}, the config describes a {model_type}")
    if meta["input"]["channel_order"] != cfg.INPUT.FORMAT:
        problems.append(f"artifact expects {meta['input']['channel_order']} input, "
                        f"config INPUT.FORMAT is {cfg.INPUT.FORMAT}")
    for key, value in zip(("pixel_mean", "pixel_std"), input_normalization(cfg, eager)):
        if not np.allclose(meta["input"][key], value):
            problems.append(f"artifact {key} {meta['input'][key]} != the eager model's {list(value)}")
    if problems:
        return {"passed": False, "convention_mismatch": problems, "images": []}
    reports = []
    for k, image in enumerate(images):
        conv = meta
        if model_type == "classifier" and k > 0:  # another input size (Table 4's multi-scale test)
            side = int(meta["size_rules"]["crop_size"]) * 3 // 2
            conv = {**meta, "size_rules": {**meta["size_rules"], "resize_shorter": side, "crop_size": side}}
        array = preprocess(image, conv)
        if model_type == "classifier":  # a batch of two checks the dynamic batch axis too
            array = np.concatenate([array, array[:, :, :, ::-1]])
        ref, out = _eager_outputs(eager, array), exported(array)
        if model_type == "detector":
            h = cfg.MODEL.ROI_HEADS
            rep = compare_detections(ref, out, tol, h.SCORE_THRESH_TEST, h.DETECTIONS_PER_IMAGE)
        else:
            rep = compare_logits(ref[0], out[0], tol)
        rep["input_shape"] = list(array.shape)
        reports.append(rep)
    return summarize(reports)


def verification_images(cfg, sample: np.ndarray | None) -> list[np.ndarray]:
    """The sample image (or a generated scene) and a second one of another shape (classifiers:
    the second is also fed at 1.5x the crop size)."""
    if sample is None:
        if model_type_of(cfg) == "classifier":
            side = int(cfg.INPUT.CROP_SIZE)
            sample = generated_image(side + side // 4, side + side // 2)
        else:
            sample = generated_image()
    return [sample, second_shape(sample)]


def export_model(cfg, fmt: str, output_dir: str, sample: np.ndarray | None = None,
                 opset: int = DEFAULT_OPSET, tol: Tolerance = Tolerance(), model=None) -> tuple[str, dict]:
    """Export the model `cfg` describes, verify it, and write metadata with the verdict.

    Args:
        cfg: a config (MODEL.WEIGHTS is loaded when set); fmt: "torchscript" or "onnx".
        sample: BGR image to trace and compare on; None generates one.
        model: an eager model to export instead of building one from cfg.
    Returns (artifact path, metadata). Raises ExportMismatchError when the outputs differ beyond
    `tol`; the artifact and its metadata (with "verification": {"passed": false, ...}) stay on
    disk for inspection.
    """
    model_type = model_type_of(cfg)
    eager = build_eager_model(cfg) if model is None else model.eval()
    module = make_export_module(cfg, eager)
    images = verification_images(cfg, sample)
    meta = build_metadata(cfg, fmt, "", model_type, opset, eager)  # conventions only, to preprocess
    example = torch.from_numpy(preprocess(images[0], meta))
    path = export_artifact(module, example, fmt, output_dir, model_type, opset)
    meta = build_metadata(cfg, fmt, path, model_type, opset, eager)
    meta["verification"] = {"passed": None, "tolerance": tol.as_dict()}
    write_metadata(meta, path)  # ExportedModel reads it back, as deployed code will
    report = verify_exported(cfg, module, ExportedModel(path), images, tol)
    meta["verification"] = {**report, "tolerance": tol.as_dict()}
    write_metadata(meta, path)
    if not report["passed"]:
        raise ExportMismatchError(f"{path}: exported outputs differ from eager PyTorch beyond tolerance "
                                  f"{tol.as_dict()}: {format_report(report)}")
    logger.info("Exported %s; %s", path, format_report(report))
    return path, meta


def format_report(report: dict) -> str:
    """One line per compared image, plus the largest differences."""
    if report.get("convention_mismatch"):
        return "input conventions differ: " + "; ".join(report["convention_mismatch"])
    parts = []
    for r in report["images"]:
        shape = "x".join(map(str, r["input_shape"]))
        if "num_eager" in r:
            parts.append(f"[{shape}] detections eager {r['num_eager']} / exported {r['num_exported']}, "
                         f"matched {r['matched']}, max box diff {r['max_box_diff']:.3g} px, "
                         f"max score diff {r['max_score_diff']:.3g}{'' if r['passed'] else '  MISMATCH'}")
        else:
            parts.append(f"[{shape}] max logit diff {r['max_logit_diff']:.3g}, top-1 agreement "
                         f"{r['top1_agree']:.0%}{'' if r['passed'] else '  MISMATCH'}")
    return ("PASSED" if report["passed"] else "FAILED") + ": " + "; ".join(parts)
