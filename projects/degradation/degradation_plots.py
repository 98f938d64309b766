"""Figures and the markdown report of the degradation study (Fig. 6 and Fig. 7 styles)."""
from __future__ import annotations

import numpy as np


def _figure(ncols: int, width: float = 5.5, height: float = 4.0):
    # A bare Figure renders with Agg and never touches pyplot's global backend (display-less runs).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _depth_colors(results: list[dict]) -> dict:
    depths = sorted({r["depth"] for r in results})
    palette = ("tab:orange", "tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown")
    return {d: palette[i % len(palette)] for i, d in enumerate(depths)}


def plot_curves(results: list[dict], path: str) -> str:
    """Fig. 6 style: one panel for plain nets, one for ResNets; dashed = training error of the
    augmented mini-batches, bold = validation error; one colour per depth."""
    fig, axes = _figure(2)
    colors = _depth_colors(results)
    for ax, plain, title in ((axes[0], True, "plain"), (axes[1], False, "ResNet")):
        for r in (r for r in results if r["plain"] == plain):
            c = r["curve"]
            ax.plot(c["iteration"], c["train_err"], "--", lw=1, color=colors[r["depth"]])
            ax.plot(c["iteration"], c["val_err"], "-", lw=2.2, color=colors[r["depth"]],
                    label=f"{r['name']} (train dashed, val bold)")
        ax.set_title(f"{title} nets")
        ax.set_xlabel("iteration")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ymax = max(max(r["curve"]["train_err"] + r["curve"]["val_err"]) for r in results)
    for ax in axes:
        ax.set_ylim(0, min(100, ymax * 1.05 + 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_response_std(results: list[dict], path: str) -> str:
    """Fig. 7 style: the std of each 3x3 layer's response, in layer order (left) and sorted by
    magnitude (right)."""
    fig, axes = _figure(2)
    colors = _depth_colors(results)
    for r in results:
        stds = np.asarray(r["response_std"])
        kw = dict(ls="--" if r["plain"] else "-", lw=1.4, color=colors[r["depth"]], label=r["name"])
        axes[0].plot(np.arange(1, len(stds) + 1), stds, **kw)
        axes[1].plot(np.arange(1, len(stds) + 1), np.sort(stds)[::-1], **kw)
    for ax, x in ((axes[0], "layer index (original)"), (axes[1], "layer index (sorted by magnitude)")):
        ax.set_xlabel(x)
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def summary_markdown(summary: dict) -> str:
    s = summary["settings"]
    lines = ["# Degradation study (plain vs residual, Figs. 4/6/7)", "",
             f"Data: `{summary['data_root']}`; {s['iterations']} iterations, batch {s['batch_size']}, lr "
             f"{s['base_lr']} (/10 at {', '.join(str(int(f * s['iterations'])) for f in s['lr_steps'])}; "
             f"warm-up {s.get('warmup_iters', 0)} iterations from x{s.get('warmup_factor', 1)}), "
             f"seed {s['seed']}" + (f"; overrides {s['extra']}" if s.get("extra") else "") + ".", "",
             "| net | train err, last window (%) | train err, eval mode (%) | val err (%) "
             "| mean response std | time (s) |",
             "|---|---|---|---|---|---|"]
    for r in summary["models"]:
        lines.append(f"| {r['name']} | {r['final_train_err_running']:.2f} | {r['final_train_err_eval']:.2f} | "
                     f"{r['final_val_err']:.2f} | {np.mean(r['response_std']):.3f} | {r['seconds']:.0f} |")
    lines += ["", "Findings (training error = running error of the last evaluation window):", ""]
    for k, v in summary["findings"].items():
        lines.append(f"- {k}: {v if isinstance(v, bool) else f'{v:+.2f}'}")
    lines += ["", "![curves](curves.png)", "", "![response std](response_std.png)", ""]
    return "\n".join(lines)
