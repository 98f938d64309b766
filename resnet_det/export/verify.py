"""Compare an exported model's outputs with eager PyTorch's, and make the images to compare on."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Largest differences accepted between eager and exported outputs.

    Float32 kernels in another order (onnxruntime, fused TorchScript ops) move boxes by ~1e-4 px
    and scores by ~1e-7 on the tiny test models; the defaults leave room for deep nets at 1333 px.
    """

    box_atol: float = 0.05      # pixels, in the input image's frame
    score_atol: float = 1e-3
    logit_atol: float = 1e-3    # classifier logits: |a - b| <= atol + rtol * |b|
    logit_rtol: float = 1e-3

    def as_dict(self) -> dict:
        return asdict(self)


def _linf(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest coordinate difference between each box of `a` (N, 4) and each of `b` (M, 4)."""
    return np.abs(a[:, None, :] - b[None, :, :]).max(-1) if len(a) and len(b) else np.zeros((len(a), len(b)))


def compare_detections(ref: tuple, out: tuple, tol: Tolerance, score_thresh: float = 0.0,
                       max_detections: int | None = None) -> dict:
    """Match exported detections (boxes, scores, classes) to eager ones and report the differences.

    Order is not compared: two scores a float rounding apart may swap places after NMS. Each eager
    detection, best score first, takes the unused exported one of the same class with the closest
    box; it matches when box and score are within tolerance. A detection left unmatched passes only
    when its score sits within `score_atol` of a cut (the score threshold, or the lowest kept score
    when DETECTIONS_PER_IMAGE truncated the list): rounding may legitimately move it across.
    """
    rb, rs, rc = (np.asarray(x) for x in ref)
    ob, os_, oc = (np.asarray(x) for x in out)
    rb, ob = rb.reshape(-1, 4).astype(np.float64), ob.reshape(-1, 4).astype(np.float64)
    rs, os_ = rs.astype(np.float64).ravel(), os_.astype(np.float64).ravel()
    rc, oc = rc.astype(np.int64).ravel(), oc.astype(np.int64).ravel()
    cuts = [score_thresh]
    for scores in (rs, os_):
        if max_detections and len(scores) >= max_detections:
            cuts.append(float(scores.min()))
    dist = _linf(rb, ob)
    used = np.zeros(len(ob), bool)
    max_box = max_score = 0.0
    bad_ref = []
    for i in np.argsort(-rs, kind="stable"):
        cand = np.flatnonzero((oc == rc[i]) & ~used)
        if len(cand) == 0:
            bad_ref.append(int(i))
            continue
        j = cand[np.argmin(dist[i, cand])]
        box_d, score_d = float(dist[i, j]), abs(float(rs[i] - os_[j]))
        max_box, max_score = max(max_box, box_d), max(max_score, score_d)
        if box_d <= tol.box_atol and score_d <= tol.score_atol:
            used[j] = True
        else:
            bad_ref.append(int(i))

    def near_cut(score: float) -> bool:
        return any(abs(score - c) <= tol.score_atol for c in cuts)

    bad_out = [int(j) for j in np.flatnonzero(~used)]
    unexplained = [i for i in bad_ref if not near_cut(rs[i])] + [j for j in bad_out if not near_cut(os_[j])]
    return {"num_eager": int(len(rs)), "num_exported": int(len(os_)), "matched": int(used.sum()),
            "unmatched_eager": len(bad_ref), "unmatched_exported": len(bad_out),
            "max_box_diff": max_box, "max_score_diff": max_score, "passed": not unexplained}


def compare_logits(ref: np.ndarray, out: np.ndarray, tol: Tolerance) -> dict:
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        return {"shape_eager": list(ref.shape), "shape_exported": list(out.shape),
                "max_logit_diff": float("inf"), "top1_agree": 0.0, "passed": False}
    diff = float(np.abs(ref - out).max()) if ref.size else 0.0
    ok = bool(np.allclose(out, ref, rtol=tol.logit_rtol, atol=tol.logit_atol))
    return {"shape": list(ref.shape), "max_logit_diff": diff,
            "top1_agree": float((ref.argmax(-1) == out.argmax(-1)).mean()) if ref.size else 1.0, "passed": ok}


def summarize(reports: list[dict]) -> dict:
    """One verdict and the largest differences over all compared images."""
    keys = ("max_box_diff", "max_score_diff", "max_logit_diff")
    worst = {k: max(r[k] for r in reports) for k in keys if any(k in r for r in reports)}
    return {"passed": all(r["passed"] for r in reports), **worst, "images": reports}


def generated_image(height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """A deterministic BGR test scene (textured background, coloured shapes) from the demo data
    set's drawing code, used when no --sample-image is given."""
    from ..data.shapes_draw import SHAPE_KINDS, render_scene

    image, _ = render_scene(np.random.default_rng(seed), height, width, SHAPE_KINDS[:5], n_objects=4,
                            n_distractors=2)
    return image


def second_shape(image: np.ndarray) -> np.ndarray:
    """The image transposed (or cropped when square): another H x W, so a graph that froze the
    export-time size shows up as a mismatch."""
    h, w = image.shape[:2]
    if h != w:
        return np.ascontiguousarray(image.transpose(1, 0, 2))
    return np.ascontiguousarray(image[: max(1, (2 * h) // 3)])
