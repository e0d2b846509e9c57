"""int8 GEMM microbenchmark: int8kit against float32 and the int8 GEMMs users would pick.

Contenders, all timed in this process, interleaved round-robin, medians reported:

  int8kit_s32       ops.gemm_s32 on prepacked weights, uint8 A with a zero point, int32 out
  int8kit_f32       ops.gemm_f32: same GEMM with the fused epilogue (per-row a_scale and
                    zero point, per-channel w_scale, bias), float32 out
  int8kit_s32_avx2  ops.gemm_s32(..., isa='avx2'): the AVX2 path forced
  int8kit_s32_avxvnni
                    ops.gemm_s32(..., isa='avx_vnni'): the AVX-VNNI path forced (ymm
                    vpdpbusd, for CPUs with VNNI but no AVX-512), when the CPU has it
  torch_f32         torch.nn.functional.linear(x, w, b) in float32
  torch_int_mm      torch._int_mm(int8 A, int8 B) -> int32
  ort_mmi           ONNX Runtime MatMulInteger (uint8 A + zero point, int8 B initializer)

Run from the repository root:

    PYTHONPATH=python python benchmarks/bench_gemm.py  (or: python -m int8kit.bench.gemm) [--threads 1,2] [--shapes 0,2,32x768x768]
        [--quick] [--rounds N] [--json bench_out/bench_gemm.json]

or from Python: ``from int8kit.bench import gemm; gemm.run(...)``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

from . import _harness as H
from . import avx2_machine

import int8kit
from int8kit import ops

import torch

# (M, K, N)
SHAPES: list[tuple[int, int, int]] = [
    (1, 768, 768),
    (1, 4096, 4096),
    (8, 768, 3072),
    (32, 768, 768),
    (128, 768, 3072),
    (128, 3072, 768),
    (512, 1024, 1024),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
]
QUICK_SHAPES = [SHAPES[i] for i in (0, 2, 3, 4)]

CONTENDERS = ["int8kit_s32", "int8kit_f32", "int8kit_s32_avx2", "int8kit_s32_avxvnni",
              "torch_f32", "torch_int_mm", "ort_mmi"]
LABELS = {
    "int8kit_s32": "int8kit s32",
    "int8kit_f32": "int8kit f32-epilogue",
    "int8kit_s32_avx2": "int8kit s32 [avx2]",
    "int8kit_s32_avxvnni": "int8kit s32 [avx_vnni]",
    "torch_f32": "torch f32 linear",
    "torch_int_mm": "torch._int_mm",
    "ort_mmi": "ORT MatMulInteger",
}
# peers that int8kit_s32 is compared with (peer_time / int8kit_s32_time)
PEERS = ["torch_f32", "torch_int_mm", "ort_mmi"]
# Timed in two separate rotations (see _harness.time_groups): the int8 kernels among
# themselves, and float32 beside int8kit's paths, which give the speedups vs float32.
# "vnni_peak" (a _harness.PeakProbe) gives "% of peak" its yardstick in the same rotation.
GROUPS = {
    "int8": ["int8kit_s32", "int8kit_f32", "torch_int_mm", "ort_mmi", "vnni_peak"],
    "float": ["torch_f32", "int8kit_s32", "int8kit_f32", "int8kit_s32_avx2",
              "int8kit_s32_avxvnni"],
}

DEFAULT_TARGET_S = 0.3
QUICK_TARGET_S = 0.1
AVX2_TARGET = 2.0  # the target: AVX2 path >= 2x float32 at M >= 32
AVX2_TARGET_MIN_M = 32
# Judged against float32 at AVX2 width (avx2_machine: what a CPU without AVX-512 runs).
AVX2_TARGET_RATIO = "avx2_vs_torch_f32_at_avx2"


# ----------------------------------------------------------------------------- contenders


def _ort_session(b_kn: np.ndarray, m: int, threads: int):
    """ONNX Runtime session with one MatMulInteger node: Y[int32] = (A - a_zp) @ B.

    B is a graph initializer (so ORT may prepack it); A and its scalar zero point are inputs
    (dynamic quantization computes the zero point per call). Spinning is off so ORT's idle
    pool threads do not steal a core from the contender timed after it.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = b_kn.shape
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])
    graph = helper.make_graph(
        [node], "gemm_s8",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k]),
         helper.make_tensor_value_info("a_zp", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
        [numpy_helper.from_array(b_kn, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(onnx.IR_VERSION, 10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


class _Case:
    """Inputs, prepacked weights and contender callables for one (M, K, N, threads)."""

    def __init__(self, m: int, k: int, n: int, threads: int, seed: int):
        self.m, self.k, self.n, self.threads = m, k, n, threads
        rng = np.random.default_rng([seed, m, k, n])
        w = rng.integers(-127, 128, size=(n, k), dtype=np.int8)          # symmetric weights
        a = rng.integers(0, 256, size=(m, k), dtype=np.uint8)            # uint8 activations
        self.zp = int(rng.integers(96, 160))                              # per-tensor zp
        self.w = torch.from_numpy(w)
        self.a_u8 = torch.from_numpy(a)
        self.packed = ops.pack_weight(self.w)
        # float epilogue parameters (dynamic default: per-row activation parameters)
        self.zp_rows = torch.from_numpy(rng.integers(96, 160, size=m).astype(np.int32))
        self.a_scale = torch.from_numpy(rng.uniform(0.005, 0.02, size=m).astype(np.float32))
        self.w_scale = torch.from_numpy(rng.uniform(0.001, 0.01, size=n).astype(np.float32))
        self.bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        # float32 contender: the dequantized tensors (ordinary normal floats, no denormals)
        self.x_f32 = ((self.a_u8.float() - self.zp_rows.float()[:, None])
                      * self.a_scale[:, None]).contiguous()
        self.w_f32 = (self.w.float() * self.w_scale[:, None]).contiguous()
        # torch._int_mm: int8 A (uint8 shifted by -128) and B = weight^T (column-major view
        # of the [N, K] weight, as an nn.Linear-style weight gives it)
        self.a_s8 = torch.from_numpy((a ^ np.uint8(0x80)).view(np.int8))
        self.b_kn_view = self.w.t()
        self.notes: list[str] = []
        self.na: dict[str, str] = {}
        self.fns: dict[str, object] = {}
        self._ort = None
        self._build()

    # -- builders ------------------------------------------------------------------------

    def _build(self):
        t, p = self.threads, self.packed
        a, zp = self.a_u8, self.zp
        self.fns["int8kit_s32"] = lambda: ops.gemm_s32(a, zp, p, threads=t)
        zr, asc, wsc, b = self.zp_rows, self.a_scale, self.w_scale, self.bias
        self.fns["int8kit_f32"] = lambda: ops.gemm_f32(a, zr, asc, p, wsc, b, threads=t)
        if "avx2" in int8kit.cpu_info()["supported_paths"]:
            self.fns["int8kit_s32_avx2"] = lambda: ops.gemm_s32(a, zp, p, threads=t, isa="avx2")
        else:
            self.na["int8kit_s32_avx2"] = "this CPU cannot run the AVX2 path"
        if "avx_vnni" in int8kit.cpu_info()["supported_paths"]:
            self.fns["int8kit_s32_avxvnni"] = lambda: ops.gemm_s32(a, zp, p, threads=t,
                                                                   isa="avx_vnni")
        else:
            self.na["int8kit_s32_avxvnni"] = "this CPU has no AVX-VNNI"
        x, wf = self.x_f32, self.w_f32
        F = torch.nn.functional
        self.fns["torch_f32"] = lambda: F.linear(x, wf, b)
        self._build_int_mm()
        self._build_ort()

    def _build_int_mm(self):
        if not hasattr(torch, "_int_mm"):
            self.na["torch_int_mm"] = f"torch {torch.__version__} has no torch._int_mm"
            return
        a8, bkn = self.a_s8, self.b_kn_view
        try:
            torch._int_mm(a8, bkn)
            self.fns["torch_int_mm"] = lambda: torch._int_mm(a8, bkn)
            self.int_mm_padded_to = None
            return
        except Exception as e:  # shape constraints (M > 16, K and N multiples of 8, ...)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if self.m <= 16:
            a_pad = torch.zeros((17, self.k), dtype=torch.int8)
            a_pad[: self.m] = a8
            try:
                torch._int_mm(a_pad, bkn)
            except Exception as e2:
                self.na["torch_int_mm"] = (f"refused ({reason}); padded to M=17 also refused "
                                           f"({type(e2).__name__})")
                return
            self.fns["torch_int_mm"] = lambda: torch._int_mm(a_pad, bkn)
            self.int_mm_padded_to = 17
            self.notes.append(f"torch._int_mm refused M={self.m} ({reason}); timed with A "
                              f"zero-padded to M=17 (the extra rows are its cost)")
            return
        self.na["torch_int_mm"] = f"refused: {reason}"

    def _build_ort(self):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            self.na["ort_mmi"] = f"onnxruntime/onnx not installed ({e.name})"
            return
        try:
            b_kn = np.ascontiguousarray(self.w.numpy().T)
            sess = _ort_session(b_kn, self.m, self.threads)
            a_np = self.a_u8.numpy()
            zp_np = np.array(self.zp, dtype=np.uint8)
            out = np.empty((self.m, self.n), dtype=np.int32)
            io = sess.io_binding()
            io.bind_cpu_input("A", a_np)
            io.bind_cpu_input("a_zp", zp_np)
            io.bind_output("Y", "cpu", 0, np.int32, [self.m, self.n], out.ctypes.data)

            def run_ort():
                sess.run_with_iobinding(io)
                return out

            run_ort()
            self._ort = (sess, io, out, a_np, zp_np)  # keep everything alive
            self.fns["ort_mmi"] = run_ort
        except Exception as e:
            self.na["ort_mmi"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"

    def close(self):
        self.fns.clear()
        self._ort = None

    # -- verification --------------------------------------------------------------------

    def verify(self) -> dict:
        """Checks int8kit's int32 results (default, AVX2, AVX-VNNI paths) with torch._int_mm and
        ORT (zero points accounted for), and the float epilogue against the exact int32
        result. Returns {"ok": bool, "checks": {...}, "mismatches": [str, ...]}."""
        checks: dict[str, str] = {}
        bad: list[str] = []
        m = self.m
        got = {"int8kit_s32": self.fns["int8kit_s32"]()}
        for name in ("int8kit_s32_avx2", "int8kit_s32_avxvnni"):
            if name in self.fns:
                got[name] = self.fns[name]()
        colsum = self.w.to(torch.int64).sum(dim=1)                        # [N]
        refs = {}
        if "torch_int_mm" in self.fns:
            r = self.fns["torch_int_mm"]()[:m].to(torch.int64)
            # (a_u8 - zp) = (a_s8 + 128 - zp): add (128 - zp) * colsum(w)
            refs["torch_int_mm"] = r + (128 - self.zp) * colsum[None, :]
        if "ort_mmi" in self.fns:
            refs["ort_mmi"] = torch.from_numpy(self.fns["ort_mmi"]().copy()).to(torch.int64)
        if not refs:
            # no peer: exact float64 reference (|values| < 2^53, so float64 is exact)
            ref = (self.a_u8.double() - self.zp) @ self.w.double().t()
            refs["float64_exact"] = ref.to(torch.int64)
        for gname, g in got.items():
            g64 = g.to(torch.int64)
            for rname, ref in refs.items():
                key = f"{gname} == {rname}"
                if g64.shape == ref.shape and torch.equal(g64, ref):
                    checks[key] = "ok"
                else:
                    if g64.shape != ref.shape:
                        msg = f"shape {tuple(g64.shape)} vs {tuple(ref.shape)}"
                    else:
                        diff = (g64 - ref).abs()
                        msg = (f"{int((diff != 0).sum())}/{diff.numel()} elements differ, "
                               f"max |diff| {int(diff.max())}")
                    checks[key] = "MISMATCH: " + msg
                    bad.append(f"{self.m}x{self.k}x{self.n} t={self.threads}: {key}: {msg}")
        # float epilogue: acc * a_scale[m] * w_scale[n] + bias[n], from the exact int32 result
        acc = ((self.a_u8.to(torch.int64) - self.zp_rows.to(torch.int64)[:, None]).double()
               @ self.w.double().t())
        exp = (acc * self.a_scale.double()[:, None] * self.w_scale.double()[None, :]
               + self.bias.double()[None, :])
        f = self.fns["int8kit_f32"]().double()
        tol = 1e-5 * float(exp.abs().max()) + 1e-6
        err = float((f - exp).abs().max())
        key = "int8kit_f32 ~= exact epilogue"
        if err <= tol:
            checks[key] = f"ok (max |err| {err:.2e})"
        else:
            checks[key] = f"MISMATCH: max |err| {err:.3e} > tol {tol:.3e}"
            bad.append(f"{self.m}x{self.k}x{self.n} t={self.threads}: {key}: {checks[key]}")
        return {"ok": not bad, "checks": checks, "mismatches": bad}


# ----------------------------------------------------------------------------- run


def _footnotes(int_mm_padded: bool) -> list[str]:
    notes = [
        "All contenders timed in one process, interleaved: every round calls each once, in "
        "orders from a balanced Latin square (Williams design), so each contender directly "
        "follows every other one equally often; medians over all rounds after a warm-up. "
        "spread = interquartile range / median.",
        "Two rotations per shape: the int8 contenders (int8kit s32 and f32-epilogue, "
        "torch._int_mm, ORT, the VNNI peak loop) among themselves, then torch f32 beside int8kit's paths. Every "
        "int8 kernel here runs 9-16 % slower for tens of ms after float32 FMA work (a clock "
        "effect that hits every library alike), so in one rotation the int8 timings would "
        "depend on how often float32 ran before them. Speedups vs torch f32 (and the avx2 "
        "and avx_vnni rows) come from the float rotation, where int8kit pays that cost.",
        "GOPS = 2*M*N*K / median time. %peak = GOPS / the int8 VNNI peak for that thread "
        "count: int8kit's tight vpdpbusd loop, timed as one more contender in the int8 "
        "rotation (its median rate there; each run about as long as the GEMM, 20 us to 1 ms). "
        "float32 FMA peak is about 1/4 of the int8 VNNI peak, so torch f32 is shown against "
        "the int8 yardstick too.",
        "speedup column = contender median / int8kit s32 median (>1: int8kit s32 is faster). "
        "avx2/f32 (avx_vnni/f32) = torch f32 median / int8kit s32 [avx2] ([avx_vnni]) median, "
        "with float32 at this CPU's full width (AVX-512 here). .../f32@avx2: the same in a "
        "child process where MKL and oneDNN are capped at AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2, "
        "ONEDNN_MAX_CPU_ISA=AVX2), as a CPU without AVX-512 runs float32; those paths are for "
        f"such CPUs, so the issue's target (avx2 >= {AVX2_TARGET:.0f}x at M >= "
        f"{AVX2_TARGET_MIN_M}) is judged there.",
        "int8kit inputs are already-quantized uint8 activations and weights prepacked once; "
        "activation quantization is not timed here (see bench_linear). int8kit allocates its "
        "output on every call. threads= is passed explicitly; torch.set_num_threads(threads) "
        "for torch.",
        "ORT MatMulInteger: model built in memory with onnx.helper, B (int8 [K,N]) an "
        "initializer so ORT can prepack it, A and its scalar zero point as inputs, "
        "intra_op_num_threads=threads, inter_op_num_threads=1, "
        "session.intra_op.allow_spinning=0 (ORT's pool threads otherwise spin after each run "
        "and steal a core from the contender timed next); run through IOBinding into a "
        "preallocated output (ORT's fastest call path).",
        "torch._int_mm: int8 A (the uint8 activations shifted by -128) x B = weight.t() (a "
        f"column-major view of the [N,K] int8 weight); torch {torch.__version__} "
        + ("refused some M <= 16 shapes, which were zero-padded to M=17 (marked with *)."
           if int_mm_padded else "accepted every shape here (no padding)."),
        "Interference: torch's OpenMP threads spin-wait after each parallel region (libgomp "
        "default; OMP_WAIT_POLICY is not changed here), occupying cores that the next "
        "contender's threads want; and a thread that has slept must be woken. The last table "
        "shows int8kit s32's median split by the contender that ran just before it; a large "
        "gap between columns at threads > 1 is such interference, not the kernel.",
        "Correctness: before timing, int8kit's int32 results (default, AVX2 and AVX-VNNI "
        "paths) are compared "
        "exactly with torch._int_mm (+ (128 - zp) * colsum(W)) and ORT, and the float epilogue "
        "with an exact float64 computation.",
    ]
    return notes


def run(shapes=None, threads=(1, 2), quick: bool = False, rounds: int | None = None,
        json_path: str | None = None, *, target_s: float | None = None, seed: int = 0,
        peak_repeats: int | None = None, out=None) -> dict:
    """Runs the GEMM benchmark and returns every result as a dict (also written to
    ``json_path`` when given). ``shapes``: None (all, or the small ones when ``quick``), or
    a spec accepted by ``_harness.parse_shapes`` (indices into SHAPES, 'MxKxN' strings,
    (M, K, N) tuples). ``threads``: ints or '1,2'. ``rounds`` fixes the number of timed
    rounds; otherwise it adapts per shape to ``target_s`` seconds per contender."""
    out = out or sys.stdout

    def log(s=""):
        print(s, file=out, flush=True)

    t_begin = time.perf_counter()
    shape_list = H.parse_shapes(shapes, QUICK_SHAPES if (quick and shapes is None) else SHAPES,
                                3)
    thread_list = H.parse_int_list(threads)
    if target_s is None:
        target_s = QUICK_TARGET_S if quick else DEFAULT_TARGET_S
    if peak_repeats is None:
        peak_repeats = 3 if quick else 7
    warmup_s = 0.02 if quick else 0.1

    machine = H.machine_info()
    warn = H.quiet_machine_warning()
    log(f"int8kit GEMM benchmark  ({machine['cpu_model']}, {machine['logical_cpus']} logical "
        f"CPUs; int8kit {machine.get('int8kit_version')}, torch {machine['torch_version']}, "
        f"onnxruntime {machine.get('onnxruntime_version') or 'not installed'})")
    ci = machine.get("int8kit_cpu_info", {})
    log(f"int8kit paths: supported {ci.get('supported_paths')}, active "
        f"{ci.get('active_path')!r} ({ci.get('active_path_reason')})")
    if warn:
        log(warn)

    prev_threads = torch.get_num_threads()
    peaks: dict[int, dict] = {}
    for t in thread_list:
        peaks[t] = H.measure_vnni_peak(t, repeats=peak_repeats)
        pk = peaks[t]["ops_per_s"]
        log(f"VNNI peak, {t} thread(s): "
            + (f"{pk / 1e9:.1f} GOPS (max of {len(peaks[t]['runs'])} runs)" if pk
               else f"n/a ({peaks[t].get('reason')})"))

    results = []
    mismatches: list[str] = []
    any_padded = False
    try:
        for (m, k, n) in shape_list:
            for t in thread_list:
                torch.set_num_threads(t)
                case = _Case(m, k, n, t, seed)
                ver = case.verify()
                if not ver["ok"]:
                    mismatches.extend(ver["mismatches"])
                    for line in ver["mismatches"]:
                        log(f"!!! MISMATCH !!! {line}")
                ops_count = 2 * m * n * k
                probe = H.peak_probe(t, ops_count, peaks[t]["ops_per_s"])
                fns = dict(case.fns, **({"vnni_peak": probe} if probe else {}))
                groups = H.time_groups(fns, GROUPS, rounds=rounds, target_s=target_s,
                                       warmup_s=warmup_s)
                beside = groups["float"]  # the float rotation, for speedups vs float32
                timings = {**beside, **groups["int8"]}
                pk = probe.ops_per_s() if probe else None
                cont = {}
                for name in CONTENDERS:
                    if name in timings:
                        tm = timings[name]
                        g = ops_count / tm.median_s
                        cont[name] = dict(tm.to_dict(), gops=g / 1e9,
                                          frac_peak=(g / pk) if pk else None)
                    else:
                        cont[name] = {"na": case.na.get(name, "not run")}
                base = timings["int8kit_s32"].median_s
                ratios = {}
                for p in PEERS:
                    grp = beside if p == "torch_f32" else timings
                    ratios[f"int8kit_s32_vs_{p}"] = (grp[p].median_s / grp["int8kit_s32"].median_s
                                                     if p in grp else None)
                f32 = beside["torch_f32"].median_s
                ratios["int8kit_f32_vs_torch_f32"] = f32 / beside["int8kit_f32"].median_s
                for path in ("avx2", "avxvnni"):
                    own = beside.get(f"int8kit_s32_{path}")
                    ratios[f"{path}_vs_torch_f32"] = f32 / own.median_s if own else None
                cont["int8kit_s32"]["beside_float_median_s"] = beside["int8kit_s32"].median_s
                padded = getattr(case, "int_mm_padded_to", None)
                any_padded |= bool(padded)
                res = {
                    "shape": [m, k, n], "M": m, "K": k, "N": n, "threads": t,
                    "ops": ops_count, "rounds": timings["int8kit_s32"].rounds,
                    "contenders": cont, "ratios": ratios, "verification": ver,
                    "beside_float": {n: beside[n].median_s for n in GROUPS["int8"]
                                     if n in beside},
                    "int_mm_padded_to": padded, "notes": case.notes,
                    "peak_ops_per_s": pk,
                }
                results.append(res)
                s32 = cont["int8kit_s32"]
                log(f"  {m}x{k}x{n} t={t}: {res['rounds']} rounds, int8kit s32 "
                    f"{H.fmt_us(s32['median_s'])} us ({H.fmt_pct(s32['frac_peak'])} of peak), "
                    f"vs f32 {H.fmt_ratio(ratios['int8kit_s32_vs_torch_f32'])}"
                    + ("" if ver["ok"] else "  [MISMATCH]"))
                case.close()
                del case
                gc.collect()
    finally:
        torch.set_num_threads(prev_threads)
    avx2_at_avx2 = _avx2_machine(results, shape_list, thread_list, target_s, warmup_s, seed,
                                 mismatches, log)

    footnotes = _footnotes(any_padded)
    payload = {
        "benchmark": "gemm",
        "settings": {
            "shapes": [list(s) for s in shape_list], "threads": thread_list, "quick": quick,
            "rounds": rounds, "target_s_per_contender": target_s, "warmup_s": warmup_s,
            "seed": seed, "peak_repeats": peak_repeats,
        },
        "machine": machine,
        "loadavg_end": H.loadavg(),
        "peak": {str(t): v for t, v in peaks.items()},
        "avx2_machine": avx2_at_avx2,
        "contenders": {c: LABELS[c] for c in CONTENDERS},
        "results": results,
        "mismatches": mismatches,
        "footnotes": footnotes,
        "elapsed_s": time.perf_counter() - t_begin,
    }
    log()
    log(render(payload))
    if json_path:
        H.write_json(json_path, payload)
        log(f"\nJSON written to {json_path}")
    return payload


def _avx2_machine(results, shapes, threads, target_s, warmup_s, seed, mismatches, log) -> dict:
    """Times the AVX2 path against float32 capped at AVX2 (a child process, see
    avx2_machine) and adds each ratio to its result row; returns what the child said."""
    log("AVX2 and AVX-VNNI paths vs float32 at AVX2 width (child process) ...")
    got = avx2_machine.measure_in_child(gemm=shapes, threads=threads, target_s=target_s,
                                        warmup_s=warmup_s, seed=seed)
    if "error" in got:
        log(f"  failed: {got['error']}")
        return got
    by_key = {(tuple(r["shape"]), r["threads"]): r for r in got["gemm"]}
    for res in results:
        row = by_key.get((tuple(res["shape"]), res["threads"]))
        res["avx2_machine"] = row
        vs = row["vs_torch_f32"] if row else {}
        res["ratios"][AVX2_TARGET_RATIO] = vs.get("int8kit_avx2")
        res["ratios"]["avxvnni_vs_torch_f32_at_avx2"] = vs.get("int8kit_avxvnni")
        if row and not row["exact"]:
            mismatches.append(f"{res['M']}x{res['K']}x{res['N']} t={res['threads']}: a "
                              "narrow path differs from the default path (AVX2-capped child)")
    return got


def render(payload: dict) -> str:
    """The tables and footnotes for a payload returned by ``run``."""
    lines = []
    rows = []
    for r in payload["results"]:
        shape = "x".join(map(str, r["shape"]))
        base = r["contenders"]["int8kit_s32"]["median_s"]
        for name in CONTENDERS:
            c = r["contenders"][name]
            label = LABELS[name]
            if name == "torch_int_mm" and r.get("int_mm_padded_to"):
                label += " *"
            if "na" in c:
                rows.append([shape, r["threads"], label, "n/a", "", "", "", "",
                             f"({c['na']})"])
                continue
            # contenders timed only in the float rotation compare with int8kit s32 there
            ref = (r.get("beside_float", {}).get("int8kit_s32", base)
                   if name not in GROUPS["int8"] else base)
            speed = "" if name == "int8kit_s32" else H.fmt_ratio(c["median_s"] / ref)
            rows.append([shape, r["threads"], label, H.fmt_us(c["median_s"]),
                         H.fmt_pct(c["spread_iqr_rel"]), f"{c['gops']:.1f}",
                         H.fmt_pct(c["frac_peak"]), speed, ""])
            shape = ""  # print the shape once per block
        rows.append(["", "", "", "", "", "", "", "", ""])
    if rows:
        rows.pop()
    lines.append(H.format_table(
        ["shape MxKxN", "thr", "contender", "median us", "spread", "GOPS", "%peak",
         "speedup", ""], rows, align="lrlrrrrrl"))

    lines.append("")
    srows = []
    for r in payload["results"]:
        ra = r["ratios"]
        avx2, avx2_at = ra["avx2_vs_torch_f32"], ra.get(AVX2_TARGET_RATIO)
        if avx2_at is None:
            target = "n/a"
        elif r["M"] >= AVX2_TARGET_MIN_M:
            target = "met" if avx2_at >= AVX2_TARGET else "MISSED"
        else:
            target = "-"
        srows.append(["x".join(map(str, r["shape"])), r["threads"], r["rounds"],
                      H.fmt_ratio(ra["int8kit_s32_vs_torch_f32"]),
                      H.fmt_ratio(ra["int8kit_s32_vs_torch_int_mm"]),
                      H.fmt_ratio(ra["int8kit_s32_vs_ort_mmi"]),
                      H.fmt_ratio(ra["int8kit_f32_vs_torch_f32"]),
                      H.fmt_ratio(avx2), H.fmt_ratio(avx2_at), target,
                      H.fmt_ratio(ra.get("avxvnni_vs_torch_f32")),
                      H.fmt_ratio(ra.get("avxvnni_vs_torch_f32_at_avx2")),
                      "ok" if r["verification"]["ok"] else "MISMATCH"])
    lines.append(H.format_table(
        ["shape MxKxN", "thr", "rounds", "s32/f32", "s32/_int_mm", "s32/ORT",
         "f32epi/f32", "avx2/f32", "avx2/f32@avx2",
         f"avx2>={AVX2_TARGET:.0f}x@M>={AVX2_TARGET_MIN_M}", "avx_vnni/f32", "avx_vnni/f32@avx2",
         "verify"], srows, align="lrrrrrrrrrrrl"))
    lines.append("(ratios: peer median / int8kit median; >1 means int8kit is faster)")

    lines.append("")
    lines.append("int8kit s32 median (us) by the contender that ran just before it:")
    short = {"int8kit_s32": "s32", "int8kit_f32": "f32-epi", "int8kit_s32_avx2": "avx2",
             "int8kit_s32_avxvnni": "avx_vnni",
             "torch_f32": "torch f32", "torch_int_mm": "_int_mm", "ort_mmi": "ORT"}
    arows = []
    for r in payload["results"]:
        after = r["contenders"]["int8kit_s32"].get("after") or {}
        row = ["x".join(map(str, r["shape"])), r["threads"],
               H.fmt_us(r["contenders"]["int8kit_s32"]["median_s"])]
        for name in CONTENDERS[1:]:
            a = after.get(name)
            row.append(H.fmt_us(a["median_s"]) if a else "n/a")
        arows.append(row)
    lines.append(H.format_table(
        ["shape MxKxN", "thr", "all"] + [f"after {short[c]}" for c in CONTENDERS[1:]],
        arows))

    lines.append("")
    for t, p in payload["peak"].items():
        if p["ops_per_s"]:
            lines.append(f"VNNI peak alone, {t} thread(s): {p['ops_per_s'] / 1e9:.1f} GOPS "
                         f"(runs: {', '.join(f'{x / 1e9:.1f}' for x in p['runs'])}; %peak "
                         "divides by the loop's rate inside each rotation)")
        else:
            lines.append(f"VNNI peak, {t} thread(s): n/a ({p.get('reason')})")
    lines.append("")
    lines.append("Notes:")
    for i, fn in enumerate(payload["footnotes"], 1):
        lines.append(f" {i}. {fn}")
    extra = sorted({n for r in payload["results"] for n in r["notes"]})
    for n in extra:
        lines.append(f" *  {n}")
    if payload["mismatches"]:
        lines.append("")
        lines.append(f"!!! {len(payload['mismatches'])} CORRECTNESS MISMATCH(ES) !!!")
        lines.extend(f"!!! {m}" for m in payload["mismatches"])
    else:
        lines.append("")
        lines.append("Correctness: every int8kit result matched its references exactly.")
    lines.append(f"Elapsed: {payload['elapsed_s']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (1,2)")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated indices into the shape list (or ranges 'i-j') "
                         "and/or MxKxN shapes; default: all ("
                         + ", ".join(f"{i}:{'x'.join(map(str, s))}"
                                     for i, s in enumerate(SHAPES)) + ")")
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds and only small shapes (well under 30 s)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="timed rounds per shape (default: adaptive)")
    ap.add_argument("--target-s", type=float, default=None,
                    help=f"adaptive rounds: seconds per contender per shape "
                         f"(default {DEFAULT_TARGET_S}, quick {QUICK_TARGET_S})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=os.path.join("bench_out", "bench_gemm.json"),
                    help="where to write the JSON results ('' to skip)")
    args = ap.parse_args(argv)
    payload = run(args.shapes, args.threads, args.quick, args.rounds, args.json or None,
                  target_s=args.target_s, seed=args.seed)
    return 2 if payload["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
