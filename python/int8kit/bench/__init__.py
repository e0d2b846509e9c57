"""`int8kit bench`: what int8kit buys on this machine, section by section.

Sections (run in this order): gemm, linear, conv (microbenchmarks against float32 and the
installed peers), digits (a small CNN end to end), transformer (an encoder stack). Each is
a callable `run(quick: bool, threads: list[int], progress) -> {"rows": [...], "details": ...}`
whose rows follow `_rows.ROW_KEYS`; `progress` is tqdm-like (`reset(total=)`, `update(n)`).
Section modules are imported only when the section runs, and a missing one is an
ImportError naming it: a bench that silently leaves sections out would overstate coverage.
A section that raises while running is recorded (its error in the results, the JSON and
the table's footer) and the others still run: minutes of measurements are not thrown away.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import sys
import time
import traceback

import torch

from ._harness import json_safe
from ._micro import micro_section
from ._rows import ROW_KEYS, check_rows

# name -> runner, or "module:function" imported on use
SECTIONS: dict = {
    "gemm": micro_section("gemm", "int8kit.bench.gemm", "int8kit_s32", "torch_f32"),
    "linear": micro_section("linear", "int8kit.bench.linear"),
    "conv": micro_section("conv", "int8kit.bench.conv", "int8kit_cl"),
    "digits": "int8kit.bench.models:run_digits",
    "transformer": "int8kit.bench.models:run_transformer",
}

__all__ = ["SECTIONS", "ROW_KEYS", "run_bench", "load_section", "format_rows",
           "check_output_path"]


def load_section(name: str, registry: dict | None = None):
    """The runner for `name`; raises ImportError naming the missing module."""
    registry = SECTIONS if registry is None else registry
    if name not in registry:
        raise ValueError(f"sections: unknown section {name!r}; known: {list(registry)}")
    spec = registry[name]
    module_name = spec.partition(":")[0] if isinstance(spec, str) else getattr(
        spec, "module_name", None)
    if module_name:
        try:
            mod = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                raise ImportError(f"bench section {name!r} needs module {module_name}, which "
                                  f"is missing", name=module_name) from e
            raise
        if isinstance(spec, str):
            return getattr(mod, spec.partition(":")[2])
    return spec


class _NoProgress:
    def reset(self, total=None):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress_bar(desc: str, enabled: bool):
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(desc=f"{desc:<12}", file=sys.stderr, leave=True, dynamic_ncols=True)


def _machine() -> dict:
    import int8kit
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "torch": torch.__version__, "int8kit": int8kit.__version__,
            "logical_cpus": os.cpu_count()}
    try:
        info["cpu_info"] = int8kit.cpu_info()
    except Exception as e:  # the extension failed to load: say so in the results
        info["cpu_info_error"] = f"{type(e).__name__}: {e}"
    return info


def _load_warning() -> str | None:
    """Timings on a busy machine mislead: say so up front (and in the JSON)."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    cpus = os.cpu_count() or 1
    if load > 0.5 * cpus:
        return (f"WARNING: load average {load:.1f} on {cpus} CPUs: other work is running, "
                "timings will be noisy and slow")
    return None


def _fmt(x, spec: str, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec) + suffix


def format_rows(rows: list[dict]) -> str:
    """The final table: one line per section row."""
    headers = ["section", "shape / model", "thr", "int8kit ms", "float ms", "best peer",
               "peer ms", "vs float", "vs peer", "% VNNI peak"]
    body = [[r["section"], r["name"], str(r["threads"]), _fmt(r["int8kit_ms"], ".3f"),
             _fmt(r["float_ms"], ".3f"), r["best_peer"] or "none installed",
             _fmt(r["best_peer_ms"], ".3f"), _fmt(r["speedup_vs_float"], ".2f", "x"),
             _fmt(r["speedup_vs_best_peer"], ".2f", "x"),
             _fmt(None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"],
                  ".0f", "%")] for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 or i == 5 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(b) for b in body]
                     + ["(speedups: other time / int8kit time, medians; > 1 means int8kit "
                        "is faster)"])


def check_output_path(path, arg: str, directory: bool = False) -> None:
    """Raises ValueError naming `arg` unless `path` can be written as a file (or, with
    `directory`, used as a folder to write files in), creating folders as needed: checked
    before timing anything, so a bad path does not cost a whole bench run."""
    p = os.path.abspath(os.fspath(path))
    if os.path.exists(p):
        if os.path.isdir(p) != directory:
            raise ValueError(f"{arg}: {path} is {'not ' if directory else ''}a directory")
        if not os.access(p, os.W_OK | (os.X_OK if directory else 0)):
            raise ValueError(f"{arg}: {path} is not writable")
        return
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{arg}: cannot create {path}: {parent} is not a writable directory")


def _write_json(path, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(payload), f, indent=1, allow_nan=False)


def run_bench(sections=None, *, quick: bool = False, threads=None, json_path=None,
              plot_dir=None, out=None, progress: bool = True, registry=None) -> dict:
    """Runs the sections, prints the table to `out`, writes JSON / PNGs; returns the payload
    {"machine", "settings", "sections": {name: result}, "rows", "elapsed_s", "files",
    "failed", "plot_error"}. A section that raises gets {"error", "traceback", "elapsed_s"}
    as its result and is listed in "failed"; the JSON is written before the plots, and a
    plotting failure is caught into "plot_error"."""
    out = sys.stdout if out is None else out
    registry = SECTIONS if registry is None else registry
    names = list(registry) if sections is None else list(sections)
    if not names:
        raise ValueError("sections must name at least one section")
    if threads is None:
        threads = [torch.get_num_threads()]
    threads = [threads] if isinstance(threads, int) else list(threads)
    if not threads or any(not isinstance(t, int) or isinstance(t, bool) or t < 1
                          for t in threads):
        raise ValueError(f"threads must be positive ints, got {threads!r}")
    runners = {n: load_section(n, registry) for n in names}  # fail before timing anything
    if json_path:
        check_output_path(json_path, "json_path")
    if plot_dir:
        check_output_path(plot_dir, "plot_dir", directory=True)
    warning = _load_warning()
    if warning:
        print(warning, file=out)
    t0 = time.perf_counter()
    results, rows, failed = {}, [], []
    for name, runner in runners.items():
        bar = _progress_bar(name, progress)
        ts = time.perf_counter()
        try:
            res = runner(quick, threads, bar)
            rows += check_rows(name, res)
            res = dict(res, elapsed_s=time.perf_counter() - ts)
        except Exception as e:
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                   "elapsed_s": time.perf_counter() - ts}
            failed.append(name)
        finally:
            bar.close()
        results[name] = res
    payload = {"machine": _machine(),
               "settings": {"sections": names, "quick": quick, "threads": threads},
               "load_warning": warning, "sections": results, "rows": rows,
               "elapsed_s": time.perf_counter() - t0, "files": [], "failed": failed,
               "plot_error": None}
    print(format_rows(rows), file=out)
    for name in failed:
        print(f"section {name!r} FAILED: {results[name]['error']}", file=out)
    if json_path:  # before the plots: a plotting failure must not lose the measurements
        payload["files"].append(os.fspath(json_path))
        _write_json(json_path, payload)
    if plot_dir:
        from ._plot import plot_rows
        try:
            payload["files"] += plot_rows(rows, plot_dir)
        except Exception as e:
            payload["plot_error"] = f"{type(e).__name__}: {e}"
            print(f"plots FAILED: {payload['plot_error']}", file=out)
        if json_path:  # again, now with the plots' files or error
            _write_json(json_path, payload)
    for p in payload["files"]:
        print(f"wrote {p}", file=out)
    print(f"total {payload['elapsed_s']:.1f} s", file=out)
    return payload
