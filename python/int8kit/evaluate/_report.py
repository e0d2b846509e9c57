"""ComparisonReport: what quantization gained and lost, as a table, a dict, JSON, plots."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ._format import json_safe, mib, num, table
from ._latency import LatencyStat
from ._layers import LayerStat

SECTIONS = ("metric", "slices", "changed_predictions", "output", "layers",
            "unmatched_layers", "latency", "memory", "notes", "settings")


@dataclass
class ComparisonReport:
    metric_name: str | None
    n_samples: int
    metric: dict | None               # {"float", "quantized", "delta"}; None without labels
    slices: list[dict]                # {"name", "n", "float", "quantized", "delta", "changed"}
    changed_predictions: dict | None  # None when outputs are not class scores
    output: dict                      # SQNR / cosine of the final outputs
    layers: list[LayerStat]           # worst SQNR first
    unmatched_layers: dict            # {"float_only": [...], "quantized_only": [...]}
    latency: list[LatencyStat]
    memory: dict
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # batch sizes, repeats, threads

    # ------------------------------------------------------------------ export

    def to_dict(self) -> dict:
        """Every section, JSON-safe (non-finite numbers as the strings 'inf', 'nan')."""
        d = {"metric_name": self.metric_name, "n_samples": self.n_samples,
             "metric": self.metric, "slices": self.slices,
             "changed_predictions": self.changed_predictions, "output": self.output,
             "layers": [s.to_dict() for s in self.layers],
             "unmatched_layers": self.unmatched_layers,
             "latency": [s.to_dict() for s in self.latency],
             "memory": self.memory, "notes": list(self.notes),
             "settings": self.settings}
        return json_safe(d)

    def to_json(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, allow_nan=False)
        return path

    def plot(self, directory: str | os.PathLike) -> list[str]:
        """Writes layer_sqnr.png and latency.png into `directory`; returns their paths."""
        from ._plot import plot_report
        return plot_report(self, os.fspath(directory))

    # ------------------------------------------------------------------ text

    def __str__(self) -> str:
        out = [f"int8kit comparison on {self.n_samples} samples"]
        if self.metric is not None:
            m = self.metric
            out.append(f"\n{self.metric_name}: float {num(m['float'])}  quantized "
                       f"{num(m['quantized'])}  change {num(m['delta'], '+.4f')}")
        if self.slices:
            rows = [(s["name"], s["n"], num(s["float"]), num(s["quantized"]),
                     num(s["delta"], "+.4f"), "n/a" if s["changed"] is None else s["changed"])
                    for s in self.slices]
            out += ["\nPer slice (largest drop first)",
                    table(["slice", "n", "float", "quantized", "change", "changed preds"], rows)]
        c = self.changed_predictions
        if c is not None:
            line = f"\nChanged predictions: {c['count']} of {self.n_samples} ({c['fraction']:.2%})"
            if c.get("broken") is not None:
                line += (f"; {c['broken']} were right and became wrong, {c['fixed']} were "
                         f"wrong and became right")
            out.append(line)
            if c["transitions"]:
                out.append(table(["float -> quantized", "count"],
                                 [(f"{t['float']} -> {t['quantized']}", t["count"])
                                  for t in c["transitions"]]))
            if c["examples"]:
                out.append("examples (sample index: float -> quantized, label): " + ", ".join(
                    f"#{e['index']}: {e['float']} -> {e['quantized']}"
                    + (f" ({e['label']})" if e.get("label") is not None else "")
                    for e in c["examples"]))
        o = self.output
        out.append(f"\nFinal output: SQNR {num(o['sqnr_db'], '.1f')} dB, cosine "
                   f"{num(o['cosine'], '.5f')}, max |diff| {num(o['max_abs_err'], '.4g')}")
        if self.layers:
            rows = [(s.name, f"{s.float_type} -> {s.quant_type}", num(s.sqnr_db, ".1f"),
                     num(s.cosine, ".5f"), s.calls, s.note) for s in self.layers]
            out += ["\nPer layer (worst SQNR first)",
                    table(["layer", "module", "SQNR dB", "cosine", "calls", "note"], rows)]
        u = self.unmatched_layers
        if u.get("float_only") or u.get("quantized_only"):
            out.append(f"Unmatched layers: float only {u.get('float_only')}, quantized only "
                       f"{u.get('quantized_only')}")
        if self.latency:
            rows = []
            for s in self.latency:
                f, q = s.float_summary, s.quant_summary
                rows.append((s.batch_size, *(num(f[k], ".3f") for k in ("p50_ms", "p90_ms",
                                                                         "p99_ms")),
                             *(num(q[k], ".3f") for k in ("p50_ms", "p90_ms", "p99_ms")),
                             f"{s.speedup_p50:.2f}x", f"{f['throughput_per_s']:,.0f}",
                             f"{q['throughput_per_s']:,.0f}"))
            out += [f"\nLatency in ms ({len(self.latency[0].float_ms)} interleaved calls each)",
                    table(["batch", "float p50", "p90", "p99", "int8 p50", "p90", "p99",
                           "speedup", "float/s", "int8/s"], rows)]
        mem = self.memory
        ratio = mem.get("weight_ratio")
        out.append(f"\nWeights: float {mib(mem['float']['weight_bytes'])}, quantized "
                   f"{mib(mem['quantized']['weight_bytes'])}"
                   + (f" ({ratio:.2f}x smaller)" if ratio else ""))
        out.append(f"Saved state_dict: float {mib(mem['float']['state_dict_bytes'])}, "
                   f"quantized {mib(mem['quantized']['state_dict_bytes'])}")
        out.append(f"Peak RSS during inference: float {mib(mem['float']['peak_rss_bytes'])} "
                   f"(+{mib(mem['float']['peak_increase_bytes'])}), quantized "
                   f"{mib(mem['quantized']['peak_rss_bytes'])} "
                   f"(+{mib(mem['quantized']['peak_increase_bytes'])}) [{mem['method']}]")
        if self.notes:
            out += ["\nNotes:"] + [f" - {n}" for n in self.notes]
        return "\n".join(out)
