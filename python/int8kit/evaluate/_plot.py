"""PNG plots of a ComparisonReport (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
import os


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def sqnr_bars(sqnrs: list[float]) -> tuple[list[float], list[str]]:
    """Bar lengths and colours of per-layer SQNRs. Infinite values are drawn at the ends of
    the axis: +inf (identical outputs) at the right, -inf (only noise left) at the left;
    colours follow the true value, so -inf is red."""
    finite = [v for v in sqnrs if math.isfinite(v)]
    hi = max(finite + [0.0]) if finite else 60.0
    lo = min(finite + [0.0])
    cap = hi * 1.1 + 1
    floor = lo - 0.1 * (cap - lo) - 1  # below zero, so the bar is visible
    lengths = [v if math.isfinite(v) else cap if v > 0 else floor for v in sqnrs]
    colours = ["tab:red" if v < 20 else "tab:orange" if v < 30 else "tab:green" for v in sqnrs]
    return lengths, colours


def plot_report(report, directory: str) -> list[str]:
    plt = _pyplot()
    os.makedirs(directory, exist_ok=True)
    paths = []

    # Per-layer SQNR, worst at the top.
    layers = [s for s in report.layers if s.calls > 0]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(layers) + 1)))
    if layers:
        lengths, colours = sqnr_bars([s.sqnr_db for s in layers])
        ax.barh(range(len(layers)), lengths, color=colours)
        ax.set_yticks(range(len(layers)), [s.name for s in layers], fontsize=8)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no matched layers", ha="center", va="center")
    ax.set_xlabel("SQNR (dB), float vs int8 activations; higher is better")
    ax.set_title("Per-layer SQNR (worst first)")
    fig.tight_layout()
    paths.append(os.path.join(directory, "layer_sqnr.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    # Latency histograms, one panel per batch size, both models overlaid.
    n = max(1, len(report.latency))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3), squeeze=False)
    for ax, s in zip(axes[0], report.latency):
        lo = min(min(s.float_ms), min(s.quant_ms))
        hi = max(max(s.float_ms), max(s.quant_ms))
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
        ax.hist(s.float_ms, bins=bins, alpha=0.6, label="float")
        ax.hist(s.quant_ms, bins=bins, alpha=0.6, label="int8")
        ax.set_title(f"batch {s.batch_size}")
        ax.set_xlabel("ms per call")
        ax.legend()
    if not report.latency:
        axes[0][0].text(0.5, 0.5, "no latency measured", ha="center", va="center")
    fig.suptitle("Latency distribution")
    fig.tight_layout()
    paths.append(os.path.join(directory, "latency.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
