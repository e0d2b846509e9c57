"""Adapts the microbenchmark modules (gemm.py, linear.py, conv.py) to the section protocol.

Those modules keep their own `run(shapes=, threads=, quick=, ..., out=) -> dict` with a
"results" list of {"shape", "threads", "contenders": {name: {"median_s", "p25_s", "p75_s",
"frac_peak", ...} or {"na": why}}} (gemm, linear), or a "rows" list of {"shape", "batch",
"threads", "median_s": {name: s}, "peak_frac"} (conv). This file runs them one shape at a time (for the
progress bar) and turns each result into a common row. A result's "beside_float" {name: s}
holds int8kit's medians from the rotation the float contenders ran in (the speedup vs float
uses it). A module may instead define `section_run(quick, threads, progress)` returning rows
itself; that is used when present.
"""

from __future__ import annotations

import importlib
import inspect
import io

from ._rows import make_row

QUICK_TARGET_S = 0.03  # seconds per contender per shape in --quick (keeps it under a minute)


def _pick(contenders: dict, preferred: str | None, test) -> str | None:
    ok = [n for n, c in contenders.items() if "na" not in c and c.get("median_s")]
    if preferred in ok:
        return preferred
    return next((n for n in ok if test(n)), None)


def _is_float(name: str) -> bool:
    return not name.startswith("int8kit") and ("f32" in name or "float" in name)


def _results(payload: dict) -> list[dict]:
    """Both payload layouts as {"shape"/"name", "threads", "contenders"} results."""
    out = list(payload.get("results", []))
    for r in payload.get("rows", []):  # conv layout: medians per contender, one peak_frac
        cont = {n: {"median_s": v} for n, v in r["median_s"].items()}
        name = f"{r['shape']} b={r['batch']}" if "batch" in r else str(r["shape"])
        if "mode" in r:
            name += f" {r['mode']}"
        out.append({"name": name, "threads": r.get("threads"), "contenders": cont,
                    "peak_frac": r.get("peak_frac"), "int8kit_key": r.get("int8kit_key"),
                    "beside_float": r.get("beside_float", {})})
    return out


def rows_from_payload(section: str, payload: dict, int8kit_key: str | None = None,
                      float_key: str | None = None) -> list[dict]:
    """One row per result: int8kit's contender vs the fastest float32 contender (or
    `float_key`) and the fastest peer (every other non-int8kit, non-float contender)."""
    rows = []
    for r in _results(payload):
        cont = r["contenders"]
        ik = _pick(cont, r.get("int8kit_key") or int8kit_key, lambda n: n.startswith("int8kit"))
        if ik is None:
            continue
        ms = {n: c["median_s"] * 1e3 for n, c in cont.items()
              if "na" not in c and c.get("median_s")}
        floats = [n for n in ms if _is_float(n)]
        fk = float_key if float_key in ms else min(floats, key=ms.get, default=None)
        peers = {n: v for n, v in ms.items() if not n.startswith("int8kit") and not _is_float(n)}
        shape = r.get("name") or "x".join(str(v) for v in r.get("shape", [])) or "?"
        latency = {n: {"p25": c["p25_s"] * 1e3, "p50": c["median_s"] * 1e3,
                       "p75": c["p75_s"] * 1e3}
                   for n, c in cont.items() if n in ms and "p25_s" in c and "p75_s" in c}
        # int8kit's time in the float rotation, where the float contenders were timed
        beside = r.get("beside_float", {}).get(ik)
        rows.append(make_row(section, shape, r.get("threads"), ms[ik], ms.get(fk), peers,
                             int8kit_ms_beside_float=None if beside is None else beside * 1e3,
                             fraction_of_peak=cont[ik].get("frac_peak", r.get("peak_frac")), latency_ms=latency,
                             extra={"int8kit_contender": ik, "float_contender": fk,
                                    "not_run": {n: c["na"] for n, c in cont.items()
                                                if "na" in c}}))
    return rows


def micro_section(section: str, module_name: str, int8kit_key: str | None = None,
                  float_key: str | None = None):
    """A section runner for a microbenchmark module, imported only when the section runs."""

    def run(quick: bool, threads: list[int], progress) -> dict:
        mod = importlib.import_module(module_name)
        if hasattr(mod, "section_run"):
            return mod.section_run(quick, threads, progress)
        params = inspect.signature(mod.run).parameters
        # One shape per call when the module lists them; otherwise one call with its own
        # defaults (and its own quick mode).
        table = getattr(mod, "QUICK_SHAPES" if quick else "SHAPES", None)
        shapes = [[s] for s in table] if table is not None else [None]
        kwargs = {"quick": quick, "threads": list(threads)}
        if "out" in params:
            kwargs["out"] = io.StringIO()  # the orchestrator prints one table at the end
        if quick and "target_s" in params:
            kwargs["target_s"] = QUICK_TARGET_S
        if quick and "peak_repeats" in params:
            kwargs["peak_repeats"] = 5  # ms each; one noisy run would read as > 100% of peak
        progress.reset(total=len(shapes))
        rows, results, footnotes, mismatches, narrow = [], [], [], [], []
        for shp in shapes:
            payload = mod.run(**kwargs) if shp is None else mod.run(shapes=shp, **kwargs)
            rows += rows_from_payload(section, payload, int8kit_key, float_key)
            results += _results(payload)
            footnotes = payload.get("footnotes", footnotes)
            mismatches += payload.get("mismatches", [])
            narrow += (payload.get("narrow_machine") or {}).get("conv", [])  # gemm's: results
            progress.update(1)
        return {"rows": rows, "details": {"module": module_name, "results": results,
                                          "footnotes": footnotes, "mismatches": mismatches,
                                          "narrow_machine": narrow}}

    run.module_name = module_name
    return run
