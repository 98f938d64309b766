# Copied verbatim from ../shared/fixtures/detectron2/seeded_weights.py: test data code, keep its arithmetic.
"""Deterministic "pretrained-like" weights for a detectron2 model, recreated from names and shapes alone.

Every tensor is drawn from its own torch.Generator seeded with crc32(name), so anyone with the same
torch version can rebuild the exact state_dict from the (name, shape) list in a fixture JSON, without
detectron2 installed. Scales keep activations in a sane range (He-init convs, BN-like statistics),
so the detector produces varied boxes and scores instead of saturated ones.

    from seeded_weights import seeded_state_dict
    sd = seeded_state_dict(fixture["state_dict_shapes"])      # {name: torch.float32 tensor}
"""
import math
import zlib

import torch


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def seeded_tensor(name: str, shape) -> torch.Tensor:
    g = _gen(name)
    shape = tuple(shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("running_var",):
        return 0.5 + torch.rand(shape, generator=g)
    if leaf in ("running_mean",):
        return 0.1 * torch.randn(shape, generator=g)
    if ".norm." in name or name.endswith(".norm.weight") or name.endswith(".norm.bias"):
        if leaf == "weight":
            return 0.5 + 0.5 * torch.rand(shape, generator=g)
        return 0.05 * torch.randn(shape, generator=g)
    if leaf == "bias":
        return 0.01 * torch.randn(shape, generator=g)
    if "cls_score" in name or "bbox_pred" in name:  # the box predictor: small, as detectron2 initialises it
        return torch.randn(shape, generator=g) * (0.01 if "cls_score" in name else 0.002)
    if leaf == "weight":
        fan_in = int(math.prod(shape[1:])) if len(shape) > 1 else 1
        return torch.randn(shape, generator=g) * math.sqrt(1.0 / max(fan_in, 1))
    return torch.randn(shape, generator=g)


def seeded_state_dict(shapes: dict) -> dict:
    return {name: seeded_tensor(name, shape) for name, shape in shapes.items()}
