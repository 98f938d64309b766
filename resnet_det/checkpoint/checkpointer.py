"""Training checkpoints and exact resume, on fvcore's Checkpointer.

fvcore keeps what it does well: the `last_checkpoint` pointer, the checkpointables (optimizer,
scheduler), the DDP `module.` prefix and the report of missing / unexpected / other-shape keys.
Overridden, each for its reason: saving (atomic, and with the meta record and RNG state), reading
(torch.load(weights_only=True)) and resuming (the newest *readable* checkpoint, every tensor exact).
"""
from __future__ import annotations

import logging
import os
import random
import re

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer
from torch import nn

from ..utils.errors import WeightsError
from ..utils.io import atomic_save, atomic_write_text

logger = logging.getLogger(__name__)

LAST = "last_checkpoint"  # fvcore's pointer file


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel (what fvcore unwraps), else `model`."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states, as tensors and plain values only so that
    checkpoints load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                    has_gauss, cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_PERIODIC = re.compile(r"^model_(\d+)\.pth$")  # model_final / model_best are not periodic


def _iteration(path: str) -> float:
    m = re.search(r"model_(\d+)\.pth$", path)
    return int(m.group(1)) if m else (float("inf") if path.endswith("model_final.pth") else -1)


class Checkpointer(_FvcoreCheckpointer):
    """Saves model + optimizer + scheduler + iteration + meta + RNG state; resumes from the newest
    valid one. MODEL.WEIGHTS for a fresh run go through `load_model_weights` (the loading policy),
    not through fvcore's `load`/`resume_or_load`, which stay for files this class wrote.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        save_dir: OUTPUT_DIR.
        meta: the record saved with every checkpoint (meta.py, conventions.py).
        checkpointables: objects with state_dict/load_state_dict (None ones are skipped).
    """

    def __init__(self, model: nn.Module, save_dir: str, *, meta: dict | None = None, **checkpointables):
        super().__init__(unwrap_model(model), save_dir,
                         **{k: v for k, v in checkpointables.items() if v is not None})
        self.meta = meta or {}
        self.resumed_from: str | None = None

    def save(self, name: str, **extra) -> str | None:
        # fvcore writes in place (a crash leaves a truncated file) and saves no meta or RNG state.
        if not self.save_dir or not self.save_to_disk:
            return None
        state = {"model": self.model.state_dict(), "meta": self.meta, "rng": rng_state(), **extra}
        for key, obj in self.checkpointables.items():
            state[key] = obj.state_dict()
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        atomic_save(state, path)
        if name != "model_best":  # the best model is kept aside; training continues from the latest
            self.tag_last_checkpoint(basename)
        logger.info("Saved checkpoint %s", path)
        return path

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        # fvcore writes the pointer in place: a crash could leave it empty.
        atomic_write_text(os.path.join(self.save_dir, LAST), last_filename_basename)

    def _load_file(self, f: str, mmap: bool = False) -> dict:
        # fvcore's torch.load passes no weights_only: before torch 2.6 it unpickles any object (can run code).
        try:
            return torch.load(f, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(f, map_location="cpu", weights_only=True)  # not a zip file: read it

    def candidates(self) -> list[str]:
        """Checkpoints to resume from, newest first: fvcore's `last_checkpoint` pointer, then the
        model_*.pth files by iteration (model_final last written)."""
        if not os.path.isdir(self.save_dir):
            return []
        found = [self.get_checkpoint_file()] if self.has_checkpoint() else []
        found += sorted((p for p in self.get_all_checkpoint_files() if _iteration(p) >= 0),
                        key=_iteration, reverse=True)
        return list(dict.fromkeys(p for p in found if os.path.isfile(p)))

    def newest(self, mmap: bool = False) -> tuple[str | None, dict | None]:
        """(path, state) of the checkpoint `--resume` continues from: the newest readable one, skipping
        corrupt ones with a warning; (None, None) if there is none. With `mmap` the tensors are mapped,
        not read (cheap when only the meta record is wanted)."""
        for path in self.candidates():
            try:
                state = self._load_file(path, mmap=mmap)
                if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
                    raise ValueError("not a resnet_det training checkpoint (no model/iteration)")
            except Exception as e:  # truncated file, wrong format, ...
                logger.warning("Skipping unreadable checkpoint %s (%s: %s); trying an older one",
                               path, type(e).__name__, e)
                continue
            return path, state
        return None, None

    def resume(self) -> dict | None:
        """Load the newest readable checkpoint (model, checkpointables, RNG state); None if there is
        none. The path it came from is kept in `self.resumed_from`. Returns the rest of its state
        (iteration, meta, ...)."""
        path, state = self.newest()
        self.resumed_from = path
        if state is None:
            return None
        incompatible = self._load_model(state)  # fvcore: strips `module.`, lists what does not fit
        if any(incompatible):  # an exact resume needs every tensor of the same model
            raise WeightsError(
                f"--resume: {path} does not fit the model this config builds (missing: "
                f"{incompatible.missing_keys[:5]}, unexpected: {incompatible.unexpected_keys[:5]}, other "
                f"shapes: {incompatible.incorrect_shapes[:5]}). Resume with the config of the run in "
                f"OUTPUT_DIR {self.save_dir!r}, or start a new run in another folder without --resume.")
        for key, obj in self.checkpointables.items():
            if key in state:
                obj.load_state_dict(state.pop(key))
            else:
                logger.warning("%s holds no %r state: it starts afresh", path, key)
        if "rng" in state:
            set_rng_state(state["rng"])
        logger.info("Resumed from %s at iteration %d", path, state["iteration"])
        return state


    def prune(self, max_to_keep: int, keep: str | None = None) -> list[str]:
        """Delete periodic checkpoints (model_NNNNNNN.pth) beyond the newest ``max_to_keep`` by
        iteration, never ``keep`` (the one just written, counted among them), model_final.pth or
        model_best.pth; returns the deleted paths. Call it only after the new checkpoint is written:
        a failed write then deletes nothing."""
        if max_to_keep <= 0 or not os.path.isdir(self.save_dir):
            return []
        keep = os.path.abspath(keep) if keep else None
        periodic = sorted((os.path.join(self.save_dir, f) for f in os.listdir(self.save_dir) if _PERIODIC.match(f)),
                          key=_iteration, reverse=True)
        others = [p for p in periodic if os.path.abspath(p) != keep]
        old = others[max_to_keep - (1 if keep else 0):]
        for p in old:
            os.remove(p)
            logger.info("Deleted %s (SOLVER.CHECKPOINT_MAX_TO_KEEP %d)", p, max_to_keep)
        return old


def newest_checkpoint(output_dir: str, mmap: bool = False) -> tuple[str | None, dict | None]:
    """`Checkpointer.newest` for a folder alone (no model needed: the run's config is not built yet)."""
    return Checkpointer(nn.Module(), output_dir).newest(mmap=mmap)
