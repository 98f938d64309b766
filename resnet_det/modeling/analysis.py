"""Per-stage parameter and FLOP tables for the ResNet family, laid out like the paper's Table 1.

FLOPs here are the paper's: multiply-adds of the conv and fc layers only. fvcore's
`FlopCountAnalysis` already counts one fused multiply-add as one flop for conv/linear; by default it
also adds batch_norm (1-2 per element) and adaptive_avg_pool2d, which the paper leaves out and which
FrozenBatchNorm2d (plain mul/add, not an aten::batch_norm) would not report anyway. So we keep only
the multiply-add operators (`MAC_OPS`) of fvcore's per-module, per-operator counts; the elementwise
shortcut additions and ReLUs are not counted either ("negligible", Sec. 3.2). At 224x224 this gives
1.81 / 3.66 / 3.86 / 7.57 / 11.28 G for 18..152 (stride in the 1x1) against Table 1's 1.8 / 3.6 / 3.8 /
7.6 / 11.3: within 0.07 G of every figure (34 and 50 print a digit lower than rounding would give).

Used by `tools/analyze_model.py` and by the tests, so both print and check the same numbers.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch
from tabulate import tabulate
from torch import nn

with warnings.catch_warnings():  # fvcore.nn runs torch.jit.script at import, which torch deprecates
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

from .backbone import ARCHS, CifarResNet, ResNet

# fvcore operator names (by_operator keys) that are multiply-adds: the paper's FLOPs.
MAC_OPS = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum"})

# The paper's figures, one table: Table 1 FLOPs (x1e9 multiply-adds at 224x224, stride in the first
# 1x1 for the bottleneck nets) and Sec. 4.2 / Table 6 CIFAR-10 parameter counts (x1e6).
PAPER = {
    "resnet18": {"gflops": 1.8}, "resnet34": {"gflops": 3.6}, "resnet50": {"gflops": 3.8},
    "resnet101": {"gflops": 7.6}, "resnet152": {"gflops": 11.3},
    "cifar_resnet20": {"mparams": 0.27}, "cifar_resnet32": {"mparams": 0.46},
    "cifar_resnet44": {"mparams": 0.66}, "cifar_resnet56": {"mparams": 0.85},
    "cifar_resnet110": {"mparams": 1.7}, "cifar_resnet1202": {"mparams": 19.4},
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)  # the depths Table 6 reports

_NAME = re.compile(r"^(resnet|plain|cifar_resnet|cifar_plain)(\d+)$")


def model_names() -> list[str]:
    """Names `build_named_model` accepts, as examples for help texts and errors."""
    return ([f"resnet{d}" for d in ARCHS] + [f"plain{d}" for d in ARCHS]
            + [f"cifar_resnet{d}" for d in CIFAR_DEPTHS] + [f"cifar_plain{d}" for d in CIFAR_DEPTHS])


def build_named_model(name: str, *, stride_in_1x1: bool = False, plain: bool = False,
                      shortcut: str | None = None) -> nn.Module:
    """`resnet50`, `plain34`, `cifar_resnet110`, `cifar_plain20`, ... in eval mode.

    `shortcut=None` keeps each family's default (ImageNet: B; CIFAR: A, Sec. 4.2).
    """
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"model {name!r}: expected resnet<D> or plain<D> (D in "
                         f"{', '.join(map(str, ARCHS))}) or cifar_resnet<6n+2> / cifar_plain<6n+2>, "
                         f"e.g. {', '.join(model_names()[:3])}, cifar_resnet20")
    family, depth = match.group(1), int(match.group(2))
    plain = plain or family.endswith("plain")
    kwargs = {} if shortcut is None else {"shortcut": shortcut}
    if family.startswith("cifar"):
        if stride_in_1x1:
            raise ValueError(f"model {name!r}: stride_in_1x1 applies to bottleneck nets only")
        return CifarResNet(depth, plain=plain, **kwargs).eval()
    return ResNet(depth, plain=plain, stride_in_1x1=stride_in_1x1, **kwargs).eval()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(model: nn.Module, input_size: int) -> dict[str, int]:
    """Multiply-adds (conv + fc) per submodule name ("" = whole model) for a 1x3xSxS input."""
    x = torch.zeros(1, 3, input_size, input_size)
    analysis = FlopCountAnalysis(model.eval(), x)
    analysis.unsupported_ops_warnings(False)  # add, relu, max_pool2d, FrozenBN's mul/add: not MACs
    analysis.uncalled_modules_warnings(False)
    with warnings.catch_warnings():  # fvcore calls torch.jit.script, which torch now deprecates
        warnings.simplefilter("ignore", FutureWarning)
        per_module = analysis.by_module_and_operator()
    return {name: sum(v for op, v in ops.items() if op in MAC_OPS) for name, ops in per_module.items()}


@dataclass
class StageRow:
    """One row of the table: a paper stage and the modules that make it."""

    stage: str            # paper name: conv1, conv2_x, ..., fc
    modules: list[str]    # attribute names in the model (torchvision's)
    output_size: str      # "56x56"
    layers: str           # "[3x3,64; 3x3,64] x2"
    channels: int         # output channels
    params: int
    macs: int             # multiply-adds (paper's FLOPs)


def stage_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """(paper stage name, module attribute names) in forward order, as Table 1 groups them."""
    if isinstance(model, ResNet):
        # Table 1 lists the 3x3 max pool at the top of conv2_x, so it goes with layer1 here.
        groups = [("conv1", ["conv1", "bn1"]), ("conv2_x", ["maxpool", "layer1"])]
        groups += [(f"conv{i + 1}_x", [f"layer{i}"]) for i in range(2, model.num_stages + 1)]
    elif isinstance(model, CifarResNet):
        # Sec. 4.2 names no stages; torchvision-style names, sized 32/16/8 by the output column.
        groups = [("conv1", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in (1, 2, 3)]
    else:
        raise TypeError(f"no stage table for {type(model).__name__}; expected ResNet or CifarResNet")
    if getattr(model, "fc", None) is not None:
        groups.append(("fc", ["avgpool", "fc"]))
    return groups


def _kernel(conv: nn.Conv2d) -> str:
    return f"{conv.kernel_size[0]}x{conv.kernel_size[1]},{conv.out_channels}"


def describe_layers(model: nn.Module, modules: list[str]) -> str:
    """Table 1's layer column: kernel,width per conv of a block, times the number of blocks."""
    parts = []
    for attr in modules:
        m = getattr(model, attr)
        if isinstance(m, nn.MaxPool2d):
            parts.append(f"{m.kernel_size}x{m.kernel_size} max pool, stride {m.stride}")
        elif isinstance(m, nn.Conv2d):
            parts.append(f"{_kernel(m)}, stride {m.stride[0]}")
        elif isinstance(m, nn.Linear):
            parts.append(f"{m.out_features}-d fc")
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            parts.append("avg pool")
        elif isinstance(m, nn.Sequential):  # a stage: blocks share their conv shapes (Table 1)
            block = m[0]
            convs = [c for n, c in block.named_children() if n.startswith("conv")]
            parts.append(f"[{'; '.join(_kernel(c) for c in convs)}] x{len(m)}")
    return ", ".join(parts)


def stage_table(model: nn.Module, input_size: int = 224) -> list[StageRow]:
    """Rows of Table 1 for `model` at a square `input_size`: output size, layers, params, MACs."""
    groups = stage_groups(model)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [getattr(model, mods[-1]).register_forward_hook(  # sizes can be tensors while tracing
        lambda _m, _i, out, key=stage: shapes.__setitem__(key, tuple(int(s) for s in out.shape)))
        for stage, mods in groups]
    try:
        macs = count_macs(model, input_size)  # tracing runs the forward, so the hooks fire
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for stage, mods in groups:
        shape = shapes[stage]
        size = f"{shape[2]}x{shape[3]}" if len(shape) == 4 else "1x1"
        rows.append(StageRow(stage, mods, size, describe_layers(model, mods), shape[1],
                             sum(count_params(getattr(model, m)) for m in mods),
                             sum(macs.get(m, 0) for m in mods)))
    # Every parameter and MAC belongs to one row; a miss would mean a module the table forgot.
    assert sum(r.params for r in rows) == count_params(model)
    assert sum(r.macs for r in rows) == macs[""]
    return rows


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain-text table of `rows`: `columns` is [(key, header)]; thousands separators, 3 decimals, None as "-"."""
    return tabulate([[r[k] for k, _ in columns] for r in rows], headers=[h for _, h in columns], tablefmt="simple",
                    intfmt=",", floatfmt=".3f", numalign="right", missingval="-")


def stage_table_text(model: nn.Module, input_size: int = 224) -> str:
    """The per-stage table as printed by `tools/analyze_model.py`, with a total line."""
    rows = stage_table(model, input_size)
    dicts = [dict(stage=r.stage, size=r.output_size, layers=r.layers, channels=r.channels,
                  params=r.params, gflops=round(r.macs / 1e9, 3)) for r in rows]
    dicts.append(dict(stage="total", size="", layers="", channels="",
                      params=sum(r.params for r in rows),
                      gflops=round(sum(r.macs for r in rows) / 1e9, 3)))
    cols = [("stage", "stage"), ("size", "output size"), ("layers", "layers"),
            ("channels", "channels"), ("params", "params"), ("gflops", "GFLOPs (mult-adds)")]
    return format_table(dicts, cols)


def imagenet_comparison(input_size: int = 224) -> list[dict]:
    """Every Table 1 depth: params (ours, torchvision's) and GFLOPs for both stride placements."""
    import torchvision

    rows = []
    for depth in ARCHS:
        name = f"resnet{depth}"
        paper_net = build_named_model(name, stride_in_1x1=True)
        tv_net = build_named_model(name, stride_in_1x1=False)
        tv_params = count_params(getattr(torchvision.models, name)(weights=None))
        rows.append(dict(model=name, params=count_params(tv_net), torchvision_params=tv_params,
                         gflops_1x1=count_macs(paper_net, input_size)[""] / 1e9,
                         gflops_3x3=count_macs(tv_net, input_size)[""] / 1e9,
                         paper_gflops=PAPER[name]["gflops"]))
    return rows


def cifar_comparison(depths=CIFAR_DEPTHS) -> list[dict]:
    """CIFAR-10 nets (option A, Sec. 4.2): parameter counts against Table 6."""
    rows = []
    for depth in depths:
        name = f"cifar_resnet{depth}"
        params = count_params(build_named_model(name))
        rows.append(dict(model=name, params=params, mparams=params / 1e6,
                         paper_mparams=PAPER.get(name, {}).get("mparams")))
    return rows


# ---- whole detectors (tools/analyze_model.py --config-file) ----------------------------------------
DETECTOR_TASKS = ("parameter", "flop", "activation")


def detector_test_image(cfg, seed: int = 0) -> torch.Tensor:
    """A random 0-255 image (C, H, W) of the config's test size: shorter side INPUT.MIN_SIZE_TEST and a
    4:3 aspect (COCO's most common), the longer side capped at INPUT.MAX_SIZE_TEST. Random content gives
    the RPN its full MODEL.RPN.POST_NMS_TOPK_TEST proposals, which the RoI head's FLOPs scale with."""
    h = int(cfg.INPUT.MIN_SIZE_TEST)
    w = min(int(cfg.INPUT.MAX_SIZE_TEST), int(round(h * 4 / 3)))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def detector_groups(model: nn.Module) -> list[str]:
    """Module names the detector table has one row for: the backbone's stages (body children), the
    rest of the backbone (FPN), and the RPN's and RoI heads' parts, in forward order."""
    names = []
    for top, module in model.named_children():
        if top == "transform":  # resize + normalise: no parameters, no multiply-adds
            continue
        children = list(module.named_children()) or [("", module)]
        for name, child in children:
            full = f"{top}.{name}" if name else top
            if top == "backbone" and name == "body":
                names += [f"{full}.{n}" for n, _ in child.named_children()]
            else:
                names.append(full)
    return names


def detector_analysis(model: nn.Module, image: torch.Tensor, tasks=DETECTOR_TASKS) -> list[dict]:
    """Per-module rows {module, params, gflops (multiply-adds, the paper's convention), mactivations}
    for one eval-mode forward of ``image`` through ``model``, from fvcore's FlopCountAnalysis and
    ActivationCountAnalysis; the last row is the total (every MAC and parameter is in exactly one row)."""
    from fvcore.nn import ActivationCountAnalysis

    model = model.eval()
    inputs = ([{"image": image}],)
    modules = dict(model.named_modules())
    groups = detector_groups(model)
    rows = [{"module": g} for g in groups]
    total = {"module": "total"}
    if "parameter" in tasks:
        for r in rows:
            r["params"] = count_params(modules[r["module"]])
        total["params"] = count_params(model)
        assert sum(r["params"] for r in rows) == total["params"], "a parameter outside every table row"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # fvcore's tracer warnings (data-dependent shapes in the RPN/NMS)
        if "flop" in tasks:
            flops = FlopCountAnalysis(model, inputs)
            flops.unsupported_ops_warnings(False)
            flops.uncalled_modules_warnings(False)
            per = {n: sum(v for op, v in ops.items() if op in MAC_OPS)
                   for n, ops in flops.by_module_and_operator().items()}
            for r in rows:
                r["gflops"] = per.get(r["module"], 0) / 1e9
            total["gflops"] = sum(v for op, v in flops.by_operator().items() if op in MAC_OPS) / 1e9
        if "activation" in tasks:
            acts = ActivationCountAnalysis(model, inputs)
            acts.unsupported_ops_warnings(False)
            acts.uncalled_modules_warnings(False)
            per = acts.by_module()
            for r in rows:
                r["mactivations"] = per.get(r["module"], 0) / 1e6
            total["mactivations"] = acts.total() / 1e6
    return rows + [total]


def detector_table_text(rows: list[dict]) -> str:
    cols = [("module", "module"), ("params", "params"), ("gflops", "GFLOPs (mult-adds)"),
            ("mactivations", "activations (M)")]
    cols = [c for c in cols if c[0] in rows[-1]]
    # modules with nothing to count (ReLU, max pool, anchor generator, RoI pooler) would only add zero rows
    shown = [r for r in rows[:-1] if any(r.get(k) for k, _ in cols[1:])] + rows[-1:]
    return format_table(shown, cols)
