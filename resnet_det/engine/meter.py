"""Loss averages for the training loop's log lines, kept on the device between log steps."""
from __future__ import annotations

import torch

__all__ = ["DeviceMeter"]


class DeviceMeter:
    """Running sums of scalar tensors kept on their device: `add` never synchronises, `averages`
    does once. A training loop that calls `float(loss)` per step stalls the GPU every step."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: dict) -> None:
        for k, v in values.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            self._sums[k] = self._sums[k] + v if k in self._sums else v
            self._counts[k] = self._counts.get(k, 0) + 1

    def averages(self) -> dict[str, float]:
        """Mean of each key since the last call (one device-to-host copy), then reset."""
        keys = list(self._sums)
        tensors = [k for k in keys if isinstance(self._sums[k], torch.Tensor)]
        host = {}
        if tensors:
            stacked = torch.stack([self._sums[k].float().reshape(()) for k in tensors]).cpu().tolist()
            host = dict(zip(tensors, stacked))
        out = {k: float(host.get(k, self._sums[k])) / self._counts[k] for k in keys}
        self._sums.clear()
        self._counts.clear()
        return out
