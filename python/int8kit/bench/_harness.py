"""Shared helpers for int8kit's microbenchmarks.

- ``time_interleaved``: times a dict of zero-argument callables in the same process,
  round-robin after a warm-up, and returns medians and quartiles per contender. The order
  within a round follows a Williams design (a balanced Latin square), and the first call of
  each round (which follows the previous round's last) is not kept, so over each block of
  rounds every contender directly follows every other one equally often: whatever one
  contender leaves behind (spinning threads, a cold cache, an idle core that must wake up)
  is spread evenly instead of always landing on the same victim. Each contender's median
  per predecessor is kept too (``Timing.after``), which shows such interference. The number
  of rounds is chosen from the warm-up unless given.
- ``time_groups``: int8 contenders and float32 contenders timed in separate rotations.
- ``measure_vnni_peak``: the machine's int8 VNNI peak for a thread count (max of a few runs).
- ``PeakProbe`` / ``peak_probe``: the peak loop as a contender, so that "% of peak" divides
  by its median rate inside the same rotation as the kernels.
- ``format_table``, ``write_json``, ``machine_info``, ``parse_int_list``, ``parse_shapes``.

Nothing here knows about a particular operator; ``bench_gemm.py`` (and later
``bench_linear.py`` / ``bench_conv.py``) build the contenders and call these.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Per-contender result of ``time_interleaved`` (all times in seconds)."""

    median_s: float
    p25_s: float
    p75_s: float
    min_s: float
    rounds: int
    warmup_calls: int
    # median per predecessor (the contender called just before), with its sample count
    after: dict | None = None

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = 5 %)."""
        return (self.p75_s - self.p25_s) / self.median_s if self.median_s > 0 else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spread_iqr_rel"] = self.spread
        return d


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def williams_orders(n: int) -> list[list[int]]:
    """Orders of ``range(n)`` in which every ordered pair (a, b), a != b, occurs as
    neighbours equally often: n orders for even n, 2n for odd n (Williams, 1949)."""
    if n <= 1:
        return [list(range(n))]
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + i) % n for x in first] for i in range(n)]
    if n % 2:
        rows += [list(reversed(r)) for r in rows]
    return rows


def schedule(n: int, rounds: int, rotate: bool = True) -> list[tuple[int, int | None]]:
    """The calls of ``rounds`` rounds of ``n`` contenders as (contender, predecessor) pairs;
    the predecessor is None where the sample is not kept. With ``rotate``, round r runs
    ``williams_orders(n)[r % len]``, and each round's first call is not kept: it follows the
    previous round's last call, a pair the design does not balance. Over whole blocks of
    orders every contender then follows every other one equally often, and never itself."""
    orders = williams_orders(n) if rotate else [list(range(n))]
    calls, prev = [], n - 1  # the warm-up's last call
    for r in range(rounds):
        for pos, i in enumerate(orders[r % len(orders)]):
            calls.append((i, prev if pos or n == 1 or not rotate else None))
            prev = i
    return calls


def time_interleaved(
    contenders: Mapping[str, Callable[[], object]],
    *,
    rounds: int | None = None,
    target_s: float = 0.3,
    min_rounds: int = 5,
    max_rounds: int = 20000,
    warmup_s: float = 0.05,
    min_warmup_calls: int = 3,
    rotate: bool = True,
) -> dict[str, Timing]:
    """Times every callable in ``contenders`` interleaved and returns a ``Timing`` each.

    Warm-up: round-robin until every contender ran ``min_warmup_calls`` times and at least
    ``warmup_s`` seconds went by. The warm-up calls (the first excepted) give a per-call
    estimate; unless ``rounds`` is given, the number of timed rounds is chosen so that the
    whole measurement takes about ``target_s`` seconds per contender
    (``target_s * len(contenders)`` in all), clamped to [min_rounds, max_rounds]; given or
    chosen, the rounds are rounded up to whole blocks of the balanced order design.

    Each timed round calls every contender once, one after another, in the order given by
    ``schedule`` (Williams orders; each round's first call is run but not kept) when
    ``rotate``, else always in the dict's order (every call kept). A call's return value is
    released after the clock stops. The garbage collector is off while timing.
    """
    names = list(contenders)
    if not names:
        return {}
    fns = [contenders[n] for n in names]
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        # warm-up
        warm: list[list[float]] = [[] for _ in names]
        t_start = time.perf_counter()
        while True:
            for i, fn in enumerate(fns):
                t0 = clock()
                res = fn()
                t1 = clock()
                del res
                warm[i].append((t1 - t0) * 1e-9)
            if (len(warm[0]) >= min_warmup_calls
                    and time.perf_counter() - t_start >= warmup_s):
                break
        est = [statistics.median(w[1:] if len(w) > 1 else w) for w in warm]
        n = len(names)
        orders = williams_orders(n) if rotate else [list(range(n))]
        if rounds is None:
            per_round = max(sum(est), 1e-9)
            rounds = math.ceil(target_s * n / per_round)
            rounds = max(min_rounds, min(max_rounds, rounds))
        # whole blocks of the balanced design, so every predecessor occurs equally often
        rounds = math.ceil(max(1, int(rounds)) / len(orders)) * len(orders)

        samples: list[list[float]] = [[] for _ in names]
        preds: list[list[int]] = [[] for _ in names]
        for i, prev in schedule(n, rounds, rotate):
            fn = fns[i]
            t0 = clock()
            res = fn()
            t1 = clock()
            del res
            if prev is not None:
                samples[i].append((t1 - t0) * 1e-9)
                preds[i].append(prev)
    finally:
        if gc_was_enabled:
            gc.enable()

    out: dict[str, Timing] = {}
    for i, name in enumerate(names):
        s = sorted(samples[i])
        after = {}
        for p, pname in enumerate(names):
            xs = [x for x, q in zip(samples[i], preds[i]) if q == p]
            if xs:
                after[pname] = {"median_s": statistics.median(xs), "n": len(xs)}
        out[name] = Timing(
            after=after,
            median_s=statistics.median(s),
            p25_s=_quantile(s, 0.25),
            p75_s=_quantile(s, 0.75),
            min_s=s[0],
            rounds=rounds,
            warmup_calls=len(warm[i]),
        )
    return out


def time_groups(fns: Mapping[str, Callable[[], object]], groups: Mapping[str, Iterable[str]],
                timer: Callable[..., dict] | None = None, **kw) -> dict[str, dict[str, Timing]]:
    """Times each group of ``fns`` interleaved on its own (``timer``, default
    ``time_interleaved``, gets ``**kw``); names missing from ``fns`` are skipped, and a name
    may sit in several groups. Returns {group: {name: Timing}}.

    Why groups: measured on this machine, every int8 kernel (int8kit, oneDNN, FBGEMM, ORT)
    runs 9-16 % slower for tens of milliseconds after float32 FMA work, even after a 20 ms
    sleep: a clock effect of the core, not of the kernels. With float32 contenders in the
    same rotation, the int8 contenders are timed in the float code's wake, and "% of
    peak" (a peak measured alone) reads low. So the int8 contenders are timed among
    themselves, and the float ones beside int8kit in a group of their own."""
    timer = timer or time_interleaved
    out = {}
    for group, names in groups.items():
        sub = {n: fns[n] for n in names if n in fns}
        out[group] = timer(sub, **kw) if sub else {}
    return out


# ----------------------------------------------------------------------------- peak


# Best peak seen in this process per thread count: a benchmark that measures the peak
# once per shape would otherwise divide by a run that another process slowed down.
_BEST_PEAK: dict[int, float] = {}


def measure_vnni_peak(threads: int, repeats: int = 5, iters: int | None = None) -> dict:
    """int8 ops/s of int8kit's tight vpdpbusd loop at ``threads``: max over ``repeats`` runs
    and over every earlier measurement in this process (the peak is a ceiling; noise only
    ever lowers a run).

    Returns {"threads", "ops_per_s" (the max), "runs" (this call's runs)}; "ops_per_s" is
    None with a "reason" when the CPU has no AVX-512 VNNI or int8kit cannot be imported.
    """
    try:
        from int8kit import ops
    except Exception as e:  # pragma: no cover - depends on the build
        return {"threads": threads, "ops_per_s": None, "runs": [],
                "reason": f"int8kit not importable: {e}"}
    kwargs = {} if iters is None else {"iters": int(iters)}
    runs = []
    try:
        ops.vnni_peak_ops_per_second(threads, **kwargs)  # warm-up (clocks, thread start)
        for _ in range(repeats):
            runs.append(float(ops.vnni_peak_ops_per_second(threads, **kwargs)))
    except Exception as e:
        return {"threads": threads, "ops_per_s": None, "runs": runs,
                "reason": f"{type(e).__name__}: {e}"}
    best = max(runs + [_BEST_PEAK.get(threads, 0.0)])
    _BEST_PEAK[threads] = best
    return {"threads": threads, "ops_per_s": best, "runs": runs}


class PeakProbe:
    """The VNNI peak loop as one more contender in a rotation: "% of peak" then divides by
    the median peak under the same clocks and neighbours as the kernels. A peak measured
    alone catches another moment: on this shared VM the best of several runs read 865
    Gop/s in a run where the loop's median inside the rotations was ~720.

    ``ops_hint``: the kernel's op count; the loop then lasts about as long as the kernel,
    between ~20 us (timer noise) and ~1 ms (a long probe would slow big rotations)."""

    OPS_PER_ITER = 12 * 64 * 2  # one iteration of the C++ loop: 12 vpdpbusd, per thread

    def __init__(self, threads: int, ops_hint: float):
        from int8kit import ops

        self._measure = ops.vnni_peak_ops_per_second
        self.threads = threads
        per_iter = self.OPS_PER_ITER * threads
        self.iters = int(min(max(ops_hint / per_iter, 10_000), 500_000))
        self.rates: list[float] = []

    def __call__(self) -> None:
        self.rates.append(float(self._measure(self.threads, self.iters)))

    def ops_per_s(self) -> float | None:
        """Median rate of the calls so far (warm-up included: a few of many)."""
        return statistics.median(self.rates) if self.rates else None


def peak_probe(threads: int, ops_hint: float, standalone_peak: float | None):
    """A PeakProbe, or None where the peak cannot be measured (standalone_peak None)."""
    return PeakProbe(threads, ops_hint) if standalone_peak else None


# ----------------------------------------------------------------------------- output


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                 align: str | None = None) -> str:
    """Plain-text table. ``align``: one char per column, 'l' or 'r' (default: first column
    left, the rest right). Cells are str()-ed."""
    rows = [[str(c) for c in r] for r in rows]
    headers = [str(h) for h in headers]
    ncol = len(headers)
    if align is None:
        align = "l" + "r" * (ncol - 1)
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def line(cells):
        parts = []
        for i, c in enumerate(cells):
            parts.append(c.ljust(widths[i]) if align[i] == "l" else c.rjust(widths[i]))
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths).rstrip()
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def fmt_us(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    us = seconds * 1e6
    if us >= 100000:
        return f"{us:,.0f}"
    if us >= 100:
        return f"{us:.0f}"
    return f"{us:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def json_safe(o):
    """``o`` as strict JSON data: NaN and +-Inf become None (null, which every parser
    reads), Timing a dict, numpy and torch values Python ones, other objects their str()."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, (str, int, float, bool, type(None))):
        return o
    if isinstance(o, Timing):
        return json_safe(o.to_dict())
    if isinstance(o, Mapping):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if callable(getattr(o, "tolist", None)):  # numpy arrays and scalars, tensors
        return json_safe(o.tolist())
    return str(o)


def write_json(path: str, payload: dict) -> str:
    """Writes ``payload`` as indented strict JSON (see ``json_safe``), creating parent
    folders; returns the path."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(payload), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (OSError, AttributeError):
        return None


def machine_info() -> dict:
    """int8kit.cpu_info(), library versions, CPU model, logical CPUs, load average."""
    info: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "loadavg": loadavg(),
    }
    try:
        import int8kit
        info["int8kit_version"] = getattr(int8kit, "__version__", None)
        info["int8kit_cpu_info"] = int8kit.cpu_info()
    except Exception as e:
        info["int8kit_version"] = None
        info["int8kit_error"] = f"{type(e).__name__}: {e}"
    try:
        import torch
        info["torch_version"] = torch.__version__
        info["torch_num_threads"] = torch.get_num_threads()
    except Exception:
        info["torch_version"] = None
    for mod in ("onnxruntime", "onnx", "numpy"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception:
            info[f"{mod}_version"] = None
    return info


def quiet_machine_warning(threshold_per_cpu: float = 0.5) -> str | None:
    """A warning line when the 1-minute load average suggests other work is running."""
    la = loadavg()
    ncpu = os.cpu_count() or 1
    if la is not None and la[0] > threshold_per_cpu * ncpu:
        return (f"WARNING: load average {la[0]:.2f} on {ncpu} logical CPUs: other work is "
                f"running, timings will be noisy")
    return None


# ----------------------------------------------------------------------------- arguments


def parse_int_list(spec: str | Iterable[int]) -> list[int]:
    """'1,2' -> [1, 2]; an iterable of ints passes through."""
    if isinstance(spec, str):
        vals = [int(x) for x in spec.replace(" ", "").split(",") if x]
    else:
        vals = [int(x) for x in spec]
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"expected positive integers, got {spec!r}")
    return vals


def parse_shapes(spec, table: Sequence[tuple[int, ...]], ndim: int) -> list[tuple[int, ...]]:
    """Selects shapes: None -> all of ``table``; a string of comma-separated items, each
    an index into ``table`` (or a range 'i-j') or an explicit 'AxBxC' shape; or a sequence
    of such items / tuples."""
    if spec is None:
        return list(table)
    items = spec.replace(" ", "").split(",") if isinstance(spec, str) else list(spec)
    out: list[tuple[int, ...]] = []
    for it in items:
        if isinstance(it, (tuple, list)):
            shp = tuple(int(v) for v in it)
        elif isinstance(it, int) and not isinstance(it, bool):
            shp = table[it]
        else:
            s = str(it).lower()
            if not s:
                continue
            if "x" in s:
                shp = tuple(int(v) for v in s.split("x"))
            elif "-" in s[1:]:
                a, b = s.split("-", 1)
                out.extend(table[int(a): int(b) + 1])
                continue
            else:
                shp = table[int(s)]
        if len(shp) != ndim or any(v < 1 for v in shp):
            raise ValueError(f"shape {it!r}: expected {ndim} positive sizes")
        out.append(shp)
    if not out:
        raise ValueError(f"no shapes selected by {spec!r}")
    return out
