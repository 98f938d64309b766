"""One table of ResNet parameter names in three conventions, used in both directions.

    torchvision   conv1.weight   bn1.*                 layer1.0.conv1.weight   layer1.0.downsample.1.*
    detectron2    stem.conv1.weight  stem.conv1.norm.*  res2.0.conv1.weight     res2.0.shortcut.norm.*
    msra          conv1_w        res_conv1_bn_{s,b}    res2_0_branch2a_w       res2_0_branch1_bn_{s,b}

resnet_det's classification nets use torchvision's names. Every name is parsed into a canonical slot
(kind + fields) and written back in the target convention, so each direction reads the same table.
MSRA/Caffe2 batch norm stores only an affine scale/bias: converting to it folds the running
statistics in; converting from it produces mean 0, var 1-eps so FrozenBN computes exactly s*x + b.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import torch

logger = logging.getLogger(__name__)

CONVENTIONS = ("torchvision", "detectron2", "msra")
BN_EPS = 1e-5  # torchvision's and detectron2's BatchNorm/FrozenBN default
NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# Kind -> name template per convention; {fields} are spelled per convention by FIELDS below.
TABLE: dict[str, dict[str, str]] = {
    "stem_conv": {"torchvision": "conv1.{cp}", "detectron2": "stem.conv1.{cp}", "msra": "conv1_{cp}"},
    "stem_norm": {"torchvision": "bn1.{np}", "detectron2": "stem.conv1.norm.{np}",
                  "msra": "res_conv1_bn_{np}"},
    "conv": {"torchvision": "layer{stage}.{block}.conv{k}.{cp}",
             "detectron2": "res{stage}.{block}.conv{k}.{cp}",
             "msra": "res{stage}_{block}_branch2{k}_{cp}"},
    "norm": {"torchvision": "layer{stage}.{block}.bn{k}.{np}",
             "detectron2": "res{stage}.{block}.conv{k}.norm.{np}",
             "msra": "res{stage}_{block}_branch2{k}_bn_{np}"},
    # Eq. (2)'s projection W_s (+ its BN): torchvision's `downsample`, Caffe2's "branch1".
    "shortcut_conv": {"torchvision": "layer{stage}.{block}.downsample.0.{cp}",
                      "detectron2": "res{stage}.{block}.shortcut.{cp}",
                      "msra": "res{stage}_{block}_branch1_{cp}"},
    "shortcut_norm": {"torchvision": "layer{stage}.{block}.downsample.1.{np}",
                      "detectron2": "res{stage}.{block}.shortcut.norm.{np}",
                      "msra": "res{stage}_{block}_branch1_bn_{np}"},
    "fc": {"torchvision": "fc.{cp}", "detectron2": "linear.{cp}", "msra": "fc1000_{cp}"},
}
_SAME_NORM = {p: p for p in NORM_PARAMS}
# Field -> convention -> {canonical value: spelling}. `stage` is the paper's conv{stage}_x (2..5).
FIELDS: dict[str, dict[str, dict]] = {
    "stage": {"torchvision": {s: str(s - 1) for s in range(2, 6)},
              "detectron2": {s: str(s) for s in range(2, 6)},
              "msra": {s: str(s) for s in range(2, 6)}},
    "k": {"torchvision": {1: "1", 2: "2", 3: "3"}, "detectron2": {1: "1", 2: "2", 3: "3"},
          "msra": {1: "a", 2: "b", 3: "c"}},  # branch2a/b/c = the block's 1st/2nd/3rd conv
    "cp": {"torchvision": {"weight": "weight", "bias": "bias"},
           "detectron2": {"weight": "weight", "bias": "bias"}, "msra": {"weight": "w", "bias": "b"}},
    "np": {"torchvision": _SAME_NORM, "detectron2": _SAME_NORM,
           "msra": {"weight": "s", "bias": "b"}},  # Caffe2's affine-only BN
}
_FIELD_RE = re.compile(r"\{(\w+)\}")


def _compile(template: str, convention: str) -> re.Pattern:
    parts, pos = [], 0
    for m in _FIELD_RE.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        name = m.group(1)
        if name == "block":
            parts.append(r"(?P<block>\d+)")
        else:
            spellings = "|".join(re.escape(s) for s in FIELDS[name][convention].values())
            parts.append(f"(?P<{name}>{spellings})")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


_PATTERNS = {conv: [(kind, _compile(t[conv], conv)) for kind, t in TABLE.items()]
             for conv in CONVENTIONS}
_INVERSE = {f: {c: {v: k for k, v in spell.items()} for c, spell in per.items()}
            for f, per in FIELDS.items()}


def _check_convention(name: str, role: str) -> None:
    if name not in CONVENTIONS:
        raise ValueError(f"{role}={name!r}: expected one of {', '.join(CONVENTIONS)} "
                         "(resnet_det checkpoints use 'torchvision' names)")


def parse_key(key: str, convention: str) -> tuple[str, dict] | None:
    """The canonical (kind, fields) of `key` in `convention`, or None if the table has no row for it."""
    for kind, pattern in _PATTERNS[convention]:
        m = pattern.fullmatch(key)
        if m:
            fields = {f: (int(v) if f == "block" else _INVERSE[f][convention][v])
                      for f, v in m.groupdict().items()}
            return kind, fields
    return None


def format_key(kind: str, fields: dict, convention: str) -> str | None:
    """`kind`+`fields` spelled in `convention`; None if it has no spelling there (e.g. BN mean in msra)."""
    spelled = {}
    for f, v in fields.items():
        if f == "block":
            spelled[f] = str(v)
        elif v in FIELDS[f][convention]:
            spelled[f] = FIELDS[f][convention][v]
        else:
            return None
    return TABLE[kind][convention].format(**spelled)


@dataclass
class ConversionReport:
    """What a conversion did to every source key; nothing leaves the state dict unaccounted for."""

    src: str
    dst: str
    converted: dict[str, str] = field(default_factory=dict)   # source key -> target key
    unmatched: list[str] = field(default_factory=list)        # no table row: not converted
    dropped: dict[str, str] = field(default_factory=dict)     # matched, but no place in the target: why
    synthesized: list[str] = field(default_factory=list)      # target keys made up (Caffe2 BN stats)

    def summary(self) -> str:
        lines = [f"{self.src} -> {self.dst}: {len(self.converted)} tensors converted, "
                 f"{len(self.synthesized)} synthesized, {len(self.dropped)} dropped, "
                 f"{len(self.unmatched)} unmatched"]
        by_reason: dict[str, list[str]] = {}
        for k, why in self.dropped.items():
            by_reason.setdefault(why, []).append(k)
        for why, keys in by_reason.items():  # one line per reason: these are expected by design
            more = f", ... ({len(keys) - 3} more)" if len(keys) > 3 else ""
            lines.append(f"  dropped ({why}): {', '.join(keys[:3])}{more}")
        lines += [f"  unmatched: {k}" for k in self.unmatched]  # every one: these may be a mistake
        return "\n".join(lines)

    def log(self) -> None:
        # Unmatched keys are weights that did not travel: a warning. Dropped ones have a reason.
        logger.log(logging.WARNING if self.unmatched else logging.INFO, self.summary())


def _to_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    # Pickled Caffe2 arrays may be read-only; copy so torch owns writable memory.
    return torch.from_numpy(np.array(value, copy=True))


def _norm_group(kind: str, fields: dict) -> tuple:
    return (kind,) + tuple(sorted((f, v) for f, v in fields.items() if f != "np"))


def convert_state_dict(sd: dict, src: str, dst: str, *, eps: float = BN_EPS, keep_unmatched: bool = False,
                       log: bool = True) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename `sd` from convention `src` to `dst`; returns (new state dict, report).

    Keys the table does not know are listed in `report.unmatched` and logged; they are copied
    unchanged only with `keep_unmatched=True`. Values may be tensors or numpy arrays. `log=False`
    leaves logging of the report to the caller.

    Example::
        >>> import torchvision
        >>> sd = torchvision.models.resnet18().state_dict()
        >>> d2, report = convert_state_dict(sd, "torchvision", "detectron2")
        >>> "res2.0.conv1.norm.running_var" in d2, report.unmatched
        (True, [])
    """
    _check_convention(src, "src")
    _check_convention(dst, "dst")
    report = ConversionReport(src, dst)
    out: dict[str, torch.Tensor] = {}
    norms: dict[tuple, dict[str, tuple[str, torch.Tensor]]] = {}  # group -> np -> (src key, value)
    for key, value in sd.items():
        parsed = parse_key(key, src)
        if parsed is None:
            report.unmatched.append(key)
            if keep_unmatched:
                out[key] = _to_tensor(value)
            continue
        kind, fields = parsed
        if kind.endswith("norm") and (src == "msra") != (dst == "msra"):
            # Crossing the Caffe2 boundary changes how a BN is parametrized: handled per layer below.
            norms.setdefault(_norm_group(kind, fields), {})[fields["np"]] = (key, _to_tensor(value))
            continue
        new_key = format_key(kind, fields, dst)
        assert new_key is not None, (key, src, dst)  # only BN statistics lack a spelling (msra)
        out[new_key] = _to_tensor(value)
        report.converted[key] = new_key
    for group, params in norms.items():
        kind, fields = group[0], dict(group[1:])

        def name(param: str, kind=kind, fields=fields) -> str:
            return format_key(kind, {**fields, "np": param}, dst)

        if dst == "msra":
            _fold_bn(params, name, eps, out, report)
        else:
            _unfold_bn(params, name, eps, out, report)
    if log:
        report.log()
    return out, report


def _fold_bn(params, name, eps, out, report) -> None:
    """BN(x) = w (x - mean) / sqrt(var + eps) + b  ==  s x + b'  with  s = w / sqrt(var + eps),
    b' = b - mean s: the affine-only form Caffe2 stores (computed in float64, stored as given)."""
    if "weight" not in params or "bias" not in params:
        for k, _ in params.values():
            report.dropped[k] = "a norm layer without both weight and bias cannot be written as scale/bias"
        return
    (wk, w), (bk, b) = params["weight"], params["bias"]
    if "running_mean" in params and "running_var" in params:
        (mk, mean), (vk, var) = params["running_mean"], params["running_var"]
        scale = w.double() / torch.sqrt(var.double() + eps)
        shift = b.double() - mean.double() * scale
        out[name("weight")], out[name("bias")] = scale.to(w.dtype), shift.to(b.dtype)
        report.converted.update({wk: name("weight"), bk: name("bias"), mk: name("weight"), vk: name("bias")})
    else:  # GroupNorm or an already-affine layer: nothing to fold
        out[name("weight")], out[name("bias")] = w, b
        report.converted.update({wk: name("weight"), bk: name("bias")})
    if "num_batches_tracked" in params:
        report.dropped[params["num_batches_tracked"][0]] = "Caffe2 BN has no batch counter"


def _unfold_bn(params, name, eps, out, report) -> None:
    """Caffe2 scale/bias -> BN with mean 0, var 1-eps: FrozenBN's w/sqrt(var+eps) is then exactly s."""
    for p, (k, v) in params.items():
        out[name(p)] = v
        report.converted[k] = name(p)
    ref = params.get("weight", params.get("bias"))[1]
    out[name("running_mean")] = torch.zeros_like(ref)
    out[name("running_var")] = torch.full_like(ref, 1.0 - eps)
    report.synthesized += [name("running_mean"), name("running_var")]


def block_structure(sd: dict, convention: str) -> tuple[str, tuple[int, ...]]:
    """("basic"|"bottleneck", blocks in conv2_x..conv5_x) read off the names, to compare with Table 1."""
    blocks: dict[int, set[int]] = {s: set() for s in range(2, 6)}
    third_conv = False
    for key in sd:
        parsed = parse_key(key, convention)
        if parsed and "stage" in parsed[1]:
            blocks[parsed[1]["stage"]].add(parsed[1]["block"])
            third_conv |= parsed[1].get("k") == 3  # only bottlenecks have conv3 (Fig. 5)
    return ("bottleneck" if third_conv else "basic"), tuple(len(blocks[s]) for s in range(2, 6))


def block_mismatch(weights: tuple[str, tuple[int, ...]], expected: tuple[str, tuple[int, ...]], what: str, *,
                   extra_only: bool = False) -> str | None:
    """The depth check of tools/convert_weights.py --depth and of MODEL.WEIGHTS (checkpoint/load.py):
    None when the weights' ResNet blocks (block_structure) are `expected`'s, else one sentence naming both
    (`what`: whose blocks `expected` are, e.g. "Table 1"). ``extra_only``: only blocks beyond `expected`'s
    in a stage it has count (the weights of a deeper net, which would run truncated); missing ones are
    reported by the loader as missing tensors."""
    (w_kind, w_blocks), (e_kind, e_blocks) = weights, expected
    if extra_only:
        differ = any(0 < e < w for w, e in zip(w_blocks, e_blocks))
    else:
        differ = (w_kind, tuple(w_blocks)) != (e_kind, tuple(e_blocks))
    if not differ:
        return None
    return (f"{what} has {e_kind} blocks {tuple(e_blocks)}, but the weights have {w_kind} blocks {tuple(w_blocks)} "
            "in conv2_x..conv5_x")
