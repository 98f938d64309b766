"""The one atomic file write: after a crash, a full disk or a kill at any moment, `path` holds either
its old content or the complete new one, never a truncated file. Checkpoints, last_checkpoint,
config.yaml, converted weights, export metadata and the data caches are all written through it.
"""
from __future__ import annotations

import contextlib
import io
import os
import uuid
from typing import Callable

import torch


def atomic_write(path, write: Callable[[str], None]) -> str:
    """Call ``write(tmp)`` to write a temp file, fsync it, then rename it onto ``path``; returns ``path``.

    The temp file sits in ``path``'s folder (a rename is atomic only within one file system) and ends
    in ``path``'s suffix (writers that pick the format from it, e.g. ``np.save``, write the same
    bytes). Whatever fails, the temp file is removed and the exception propagates.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    # A fresh name the writer creates itself, so the file gets the usual (umask) permissions.
    tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{ext}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the bytes on disk before the name points at them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> str:
    """``text`` (UTF-8) into ``path`` through ``atomic_write``."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_save(obj, path) -> str:
    """``torch.save(obj)`` into ``path`` through ``atomic_write``."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def quiet_pycocotools(fn, *args):
    """Call a pycocotools function with its progress prints captured; returns (result, printed text)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args)
    return out, buf.getvalue()
