"""Where inference images come from: files, globs, folders (recursively), video files and a webcam.

``expand_inputs(["photos/", "clip.mp4", "shots/*.jpg"])`` resolves what a user typed into a list of
``Source`` (kind "image" or "video", path), before any model is built, so a typo fails at once with
the path named (``MissingFileError``). Reading is separate and forgiving: an image OpenCV cannot decode,
or a video it cannot open, is skipped and recorded in ``SkipLog`` (named and counted at the end);
only when *nothing* could be read is that an error (``DataError``).

Images are decoded in ``DataLoader`` workers (``image_loader``) so decoding overlaps with the model;
video frames are read in order from one ``cv2.VideoCapture`` (``video_frames``), a webcam likewise
(``open_webcam``). Everything is BGR uint8 HxWx3 as ``cv2.imread`` returns it (docs/CONTRACTS.md).
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..utils.errors import DataError, MissingFileError
from ..utils.visualizer import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "Source", "SkipLog", "expand_inputs", "image_loader",
           "open_video", "video_frames", "video_properties", "open_webcam", "nothing_readable"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    kind: str  # "image" or "video"
    path: str


@dataclass
class SkipLog:
    """Inputs that could not be read: (path, reason), reported once at the end of a run."""

    skipped: list = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        logger.warning("skipping %s: %s", path, reason)
        self.skipped.append((path, reason))

    def summary(self) -> str:
        if not self.skipped:
            return "no input was skipped"
        names = "; ".join(f"{p} ({r})" for p, r in self.skipped[:20])
        more = f" and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
        return f"skipped {len(self.skipped)} unreadable input(s): {names}{more}"


def _kind(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if _kind(f) is not None]
    return found


def expand_inputs(patterns) -> list[Source]:
    """Files, globs (``**`` recursive) and folders (walked recursively for image and video
    extensions) -> Sources in the order given, each path once. A file named explicitly is read
    whatever its extension (a video extension makes it a video); a glob or folder only picks files
    with known extensions. Raises MissingFileError naming every path that matched nothing."""
    if isinstance(patterns, str):
        patterns = [patterns]
    sources, seen, missing = [], set(), []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths = _walk(pattern)
            if not paths:
                missing.append(f"{pattern!r} (a folder with no files ending in "
                               f"{', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")
        elif os.path.isfile(pattern):
            paths = [pattern]
        elif _GLOB_CHARS & set(pattern):
            paths = []
            for p in sorted(glob.glob(pattern, recursive=True)):
                paths += _walk(p) if os.path.isdir(p) else [p] if _kind(p) else []
            if not paths:
                missing.append(f"{pattern!r} (the pattern matches no image or video file)")
        else:
            missing.append(f"{pattern!r} (no such file or folder)")
            paths = []
        for p in paths:
            key = os.path.abspath(p)
            if key not in seen:
                seen.add(key)
                sources.append(Source(_kind(p) or "image", p))
    if missing:
        raise MissingFileError(f"--input: nothing to read at {', '.join(missing)}; give image files, "
                               "folders of images, globs like 'photos/**/*.jpg', or video files")
    return sources


class _ImageFiles(Dataset):
    """Decodes one image per item in a worker: (index, path, BGR array or None, reason)."""

    def __init__(self, paths: list[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
        except cv2.error as e:  # some decoders raise instead of returning None
            return i, path, None, f"OpenCV error: {e}"
        if img is None:
            return i, path, None, "OpenCV cannot decode it (not an image, or corrupt)"
        return i, path, img, ""


def _as_list(batch):
    return batch


def image_loader(paths: list[str], batch_size: int = 1, num_workers: int = 0) -> DataLoader:
    """Batches of [(index, path, image or None, reason)], decoded by ``num_workers`` processes ahead
    of the model (order kept)."""
    return DataLoader(_ImageFiles(paths), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=_as_list, prefetch_factor=4 if num_workers else None)


def video_properties(cap: cv2.VideoCapture) -> tuple[float, int, int, int]:
    """(fps, width, height, frame count; count <= 0 when the container does not say)."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return (fps if fps and fps > 0 and np.isfinite(fps) else 25.0, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))


def open_video(path: str) -> cv2.VideoCapture | None:
    """An opened capture whose first frame decodes (rewound), or None (missing codec, corrupt file)."""
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        return None
    ok, frame = cap.read()
    if not ok or frame is None:
        cap.release()
        return None
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return cap


def video_frames(cap: cv2.VideoCapture, batch_size: int = 1) -> Iterator[list[np.ndarray]]:
    """Frames of an opened capture in order, ``batch_size`` at a time (the last batch may be short)."""
    batch = []
    while True:
        ok, frame = cap.read()
        if not ok or frame is None:
            break
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def open_webcam(index: int = 0) -> cv2.VideoCapture:
    """The camera ``index`` opened with a first frame readable; MissingFileError where there is none."""
    cap = cv2.VideoCapture(index)
    ok = cap.isOpened() and cap.read()[0]
    if not ok:
        cap.release()
        raise MissingFileError(f"--webcam: no camera could be opened at index {index} (none attached, or "
                               "in use, or no permission to /dev/video*); use --input with image or "
                               "video files instead")
    return cap


def nothing_readable(skips: SkipLog) -> DataError:
    """The error for a run where every input was skipped."""
    return DataError(f"--input: none of the inputs could be read; {skips.summary()}. Check that the "
                     "files are images (jpg, png, ...) or videos OpenCV can decode")
