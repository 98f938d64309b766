"""Dataset dicts held in one byte buffer, so forked loader workers share them instead of copying them.

A Python list of dicts that forked DataLoader workers inherit does not stay shared: reading an object
writes its reference count, which turns the page holding it private in every worker. Over a pass a
worker ends up with its own copy of the whole list (about 130 MB per worker for COCO train2017's
118k images, tens of GB for 8 GPUs x 4 workers). detectron2's ``DatasetFromList(serialize=True)``
avoids this by pickling every dict into one numpy buffer: two numpy arrays are two objects whose
reference counts live outside the data pages, so the pages stay shared (benchmarks/RESULTS.md,
"Loader memory"; benchmarks/bench_dataset_memory.py).
"""
from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["SerializedList"]


class SerializedList(Sequence):
    """A read-only list of picklable items stored pickled in one uint8 buffer plus int64 end offsets.

    ``store[i]`` unpickles item ``i``: a fresh copy each time, so a caller that changes the dict it
    got changes nothing in the store. Negative indices work; slicing does not (take items one by one).
    Building from a ``SerializedList`` returns an equal store without re-pickling.
    """

    def __init__(self, items):
        if isinstance(items, SerializedList):
            self._buffer, self._ends = items._buffer, items._ends
            return
        t0 = time.perf_counter()
        blobs = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in items]
        self._ends = np.cumsum(np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)))
        # One copy into a numpy-owned array (bytes.join + frombuffer would keep a read-only view).
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
        del blobs  # the pickles now live in the buffer only
        if len(self._ends) > 10000:  # worth a line only at scale
            logger.info("serialized %d dataset dicts into %.1f MiB in %.2f s", len(self._ends),
                        self._buffer.nbytes / 2**20, time.perf_counter() - t0)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"SerializedList indices must be integers, not {type(i).__name__}")
        n = len(self._ends)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"SerializedList index {i} out of range (length {n})")
        start = int(self._ends[i - 1]) if i > 0 else 0
        return pickle.loads(memoryview(self._buffer[start:int(self._ends[i])]))

    @property
    def nbytes(self) -> int:
        """Bytes held: the pickled items plus the offsets."""
        return int(self._buffer.nbytes + self._ends.nbytes)
