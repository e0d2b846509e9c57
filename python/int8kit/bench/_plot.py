"""PNG plots of bench rows: speedup by shape, and latency distributions."""

from __future__ import annotations

import os


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _label(r: dict) -> str:
    return f"{r['section']}: {r['name']} (t={r['threads']})"


def plot_rows(rows: list[dict], directory: str) -> list[str]:
    plt = _pyplot()
    os.makedirs(directory, exist_ok=True)
    paths = []

    # Speedup by shape: int8kit vs float32 and vs the best peer, log scale around 1x.
    fig, ax = plt.subplots(figsize=(9, max(3, 0.35 * len(rows) + 1.5)))
    ys = range(len(rows))
    vf = [r["speedup_vs_float"] or 0 for r in rows]
    vp = [r["speedup_vs_best_peer"] or 0 for r in rows]
    ax.barh([y - 0.2 for y in ys], vf, height=0.4, label="vs float32")
    ax.barh([y + 0.2 for y in ys], vp, height=0.4, label="vs best peer")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys), [_label(r) for r in rows], fontsize=7)
    ax.invert_yaxis()
    if any(v > 0 for v in vf + vp):
        ax.set_xscale("log")
    ax.set_xlabel("speedup (other median / int8kit median; > 1: int8kit faster)")
    ax.legend(fontsize=8)
    ax.set_title("int8kit speedup by shape")
    fig.tight_layout()
    paths.append(os.path.join(directory, "speedup.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    # Latency distributions: one box per contender, whiskers over the samples when kept,
    # over the quartiles otherwise.
    boxes = []
    for r in rows:
        for who, s in r.get("latency_ms", {}).items():
            samples = s.get("samples")
            lo, hi = (min(samples), max(samples)) if samples else (s["p25"], s["p75"])
            boxes.append({"label": f"{_label(r)} | {who}", "med": s["p50"], "q1": s["p25"],
                          "q3": s["p75"], "whislo": lo, "whishi": hi, "fliers": []})
    fig, ax = plt.subplots(figsize=(9, max(3, 0.25 * len(boxes) + 1.5)))
    if boxes:
        ax.bxp(boxes, orientation="horizontal", showfliers=False)
        ax.set_xscale("log")
        ax.tick_params(axis="y", labelsize=6)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no latency samples", ha="center", va="center")
    ax.set_xlabel("ms per call")
    ax.set_title("Latency distributions (box: quartiles; whiskers: min-max)")
    fig.tight_layout()
    paths.append(os.path.join(directory, "latency.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
