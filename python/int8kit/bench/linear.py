"""Linear-layer benchmark: float in, float out, activation quantization included.

Contenders for each (M, K, N) and thread count, all in this process, interleaved
(int8kit.bench._harness.time_interleaved, in blocks of balanced orders), medians reported:

  int8kit          int8kit.nn.QuantLinear, default scheme: int8 per-channel weights,
                   uint8 activations measured per row on every call
  int8kit_pt       the same with per-tensor weights and activations (torch.ao's scheme)
  torch_f32        float32 nn.Linear
  torch_ao_fbgemm  torch.ao.quantization.quantize_dynamic Linear, engine fbgemm
  torch_ao_x86     the same, engine x86 (both use 7-bit activations: reduce_range=True
                   is hard-coded in nnqd.Linear.forward)
  ort_dynamic      ONNX Runtime: a float MatMul+Add model through
                   onnxruntime.quantization.quantize_dynamic (QInt8 weights), which ORT
                   fuses into DynamicQuantizeMatMul; spinning off, IOBinding

Optionally (transformer=True, the default of main) an end-to-end Transformer encoder
(6 layers, d_model 384, 12 heads, FFN 1536, batch 8 x seq 128): float vs
int8kit.quantize_dynamic vs torch.ao quantize_dynamic, latency and output cosine.

    PYTHONPATH=python python benchmarks/bench_linear.py  (or: python -m int8kit.bench.linear) [--threads 1,2] [--shapes 0,3]
        [--quick] [--no-transformer] [--json bench_out/bench_linear.json]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter

import numpy as np

from . import _harness as H

import int8kit

import torch
from torch import nn

from int8kit.nn import QuantLinear

from .gemm import QUICK_SHAPES, SHAPES  # the same (M, K, N) shapes as the GEMM benchmark

CONTENDERS = ["int8kit", "int8kit_pt", "torch_f32", "torch_ao_fbgemm", "torch_ao_x86",
              "ort_dynamic"]
LABELS = {
    "int8kit": "int8kit QuantLinear (per-row act.)",
    "int8kit_pt": "int8kit QuantLinear (per-tensor)",
    "torch_f32": "torch f32 nn.Linear",
    "torch_ao_fbgemm": "torch.ao dynamic (fbgemm)",
    "torch_ao_x86": "torch.ao dynamic (x86)",
    "ort_dynamic": "ORT quantize_dynamic",
}
# Timed in two separate rotations (see _harness.time_groups): the int8 contenders among
# themselves, and float32 beside int8kit, which gives the speedups vs float32. "vnni_peak"
# (a _harness.PeakProbe) gives "% of peak" its yardstick in the same rotation.
GROUPS = {"int8": ["int8kit", "int8kit_pt", "torch_ao_fbgemm", "torch_ao_x86", "ort_dynamic",
                   "vnni_peak"],
          "float": ["torch_f32", "int8kit", "int8kit_pt"]}
MAX_REL_ERR = 0.05  # an int8 result further than this from float32 is flagged


def _time_fair(fns: dict, *, rounds, target_s: float, warmup_s: float) -> dict:
    """A contender inherits the cache footprint of the one before it (measured: the int8
    GEMM at 768x768, M=1, takes 15 us after a small call but 31 us after nn.Linear's 2.4 MB
    of float weights evicted its own from L2), so every contender must follow every other
    one equally often. time_interleaved's own orders now balance that; this section still
    times one block per Williams order and takes the median over blocks of each block's
    statistics, as its published numbers were measured."""
    names = list(fns)
    orders = H.williams_orders(len(names))
    per = {n: [] for n in names}
    for order in orders:
        res = H.time_interleaved({names[i]: fns[names[i]] for i in order},
                                 rounds=None if rounds is None else max(1, rounds // len(orders)),
                                 target_s=target_s / len(orders), min_rounds=3,
                                 min_warmup_calls=2,
                                 warmup_s=warmup_s)
        for n in names:
            per[n].append(res[n])
    med = statistics.median
    return {n: H.Timing(median_s=med(t.median_s for t in ts), p25_s=med(t.p25_s for t in ts),
                        p75_s=med(t.p75_s for t in ts), min_s=min(t.min_s for t in ts),
                        rounds=sum(t.rounds for t in ts),
                        warmup_calls=sum(t.warmup_calls for t in ts))
            for n, ts in per.items()}


def _quiet(fn):
    """torch.ao and ORT's quantizer warn on every call (deprecation, pre-processing)."""
    import logging
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    finally:
        logging.getLogger().setLevel(level)


def _torch_ao(lin: nn.Linear, engine: str):
    if engine not in torch.backends.quantized.supported_engines:
        return None, f"torch has no {engine} engine here"
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine  # the engine picks the packing at convert time
    try:
        q = _quiet(lambda: torch.ao.quantization.quantize_dynamic(
            nn.Sequential(copy.deepcopy(lin)), {nn.Linear}, dtype=torch.qint8))
    finally:
        torch.backends.quantized.engine = prev
    return q, None


def _ort(lin: nn.Linear, m: int, threads: int, tmpdir: str):
    """ORT's dynamically quantized X[M,K] @ W + b: (session, keep-alive, None), or
    (None, None, reason) when onnxruntime is missing."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        return None, None, f"onnxruntime/onnx not installed ({e.name})"
    k, n = lin.in_features, lin.out_features
    w = lin.weight.detach().numpy().T.copy()
    b = lin.bias.detach().numpy().copy()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]),
         helper.make_node("Add", ["XW", "B"], ["Y"])],
        "linear", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(onnx.IR_VERSION, 9)
    f32, q8 = os.path.join(tmpdir, "f32.onnx"), os.path.join(tmpdir, "q8.onnx")
    onnx.save(model, f32)
    _quiet(lambda: quantize_dynamic(f32, q8, weight_type=QuantType.QInt8))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # ORT's pool threads otherwise spin after each run and steal a core from the next call.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(q8, so, providers=["CPUExecutionProvider"])
    return sess, (w, b), None


class _Case:
    """Models, input and contender callables for one (M, K, N, threads)."""

    def __init__(self, m, k, n, threads, seed, tmpdir):
        self.m, self.k, self.n, self.threads = m, k, n, threads
        torch.manual_seed(seed + m + k + n)
        self.lin = nn.Linear(k, n).eval()
        for p in self.lin.parameters():
            p.requires_grad_(False)
        self.x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
        self.fns, self.na, self._keep = {}, {}, []
        x = self.x
        ql = QuantLinear.from_float(self.lin)
        qpt = QuantLinear.from_float(self.lin, weight="per_tensor", activation="per_tensor")
        self.fns["int8kit"] = lambda: ql(x)
        self.fns["int8kit_pt"] = lambda: qpt(x)
        self.fns["torch_f32"] = lambda: self.lin(x)
        for engine in ("fbgemm", "x86"):
            q, why = _torch_ao(self.lin, engine)
            if q is None:
                self.na[f"torch_ao_{engine}"] = why
            else:
                self.fns[f"torch_ao_{engine}"] = (lambda q=q: q(x))
        try:
            sess, keep, why = _ort(self.lin, m, threads, tmpdir)
        except Exception as e:  # an ORT failure must not stop the other contenders
            sess, keep, why = None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if sess is None:
            self.na["ort_dynamic"] = why
        else:
            xn = x.numpy()
            out = np.empty((m, n), dtype=np.float32)
            io = sess.io_binding()
            io.bind_cpu_input("X", xn)
            io.bind_output("Y", "cpu", 0, np.float32, [m, n], out.ctypes.data)

            def run_ort():
                sess.run_with_iobinding(io)
                return out

            self._keep += [sess, io, out, xn, keep]
            self.fns["ort_dynamic"] = run_ort

    def errors(self) -> dict:
        """max |y - y_f32| / max |y_f32| per contender (computed once, before timing)."""
        ref = self.fns["torch_f32"]()
        scale = float(ref.abs().max())
        out = {}
        for name, fn in self.fns.items():
            y = fn()
            y = torch.from_numpy(np.array(y)) if isinstance(y, np.ndarray) else y
            out[name] = float((y - ref).abs().max()) / scale
        return out


def _footnotes() -> list[str]:
    return [
        "One process, interleaved: each timed round calls every contender once; the rounds "
        "run in blocks whose orders make every contender follow every other one equally "
        "often (a Williams design), since a call right after a big float layer finds its "
        "weights evicted from L2. Medians after a warm-up; spread = IQR / median.",
        "Two rotations per shape: the int8 contenders among themselves, then torch f32 "
        "beside int8kit. Every int8 kernel here runs 9-16 % slower for tens of ms after "
        "float32 FMA work (a clock effect that hits every library alike); speedups vs torch "
        "f32 come from the float rotation, where int8kit pays that cost.",
        "Every contender takes float32 [M, K] and returns float32 [M, N]: activation "
        "quantization, the int8 GEMM and dequantization + bias are all inside the time.",
        "speedup = contender median / int8kit median (>1: int8kit faster).",
        "torch.ao: quantize_dynamic({nn.Linear}, qint8) under each engine; its forward uses "
        "7-bit activations (reduce_range=True, hard-coded in nnqd.Linear). int8kit uses the "
        "full 8 bits (exact int32 accumulation on every path).",
        "ORT: onnxruntime.quantization.quantize_dynamic(QInt8, per-tensor) of a MatMul+Add "
        "model; ORT fuses it into DynamicQuantizeMatMul. intra_op_num_threads=threads, "
        "allow_spinning=0, IOBinding into a preallocated output (int8kit and torch allocate "
        "their output on every call).",
        "rel.err = max |y - y_f32| / max |y_f32| on the benchmark input (normal, std 1).",
        "The machine may be shared: compare ratios within a row rather than across runs.",
    ]


def run(shapes=None, threads=(1, 2), quick: bool = False, rounds: int | None = None,
        json_path: str | None = None, *, target_s: float | None = None, seed: int = 0,
        transformer: bool = False, out=None) -> dict:
    """Runs the benchmark; returns {"results": [...], "transformer": ..., ...}.

    shapes: None (all SHAPES, or QUICK_SHAPES when quick) or a spec for
    _harness.parse_shapes (indices, 'MxKxN' strings, tuples). threads: ints or '1,2'."""
    out = out or sys.stdout

    def log(s=""):
        print(s, file=out, flush=True)

    t_begin = time.perf_counter()
    shape_list = H.parse_shapes(shapes, QUICK_SHAPES if (quick and shapes is None) else SHAPES, 3)
    thread_list = H.parse_int_list(threads)
    target_s = target_s if target_s is not None else (0.1 if quick else 0.3)
    machine = H.machine_info()
    log(f"int8kit linear benchmark ({machine['cpu_model']}, {machine['logical_cpus']} CPUs, "
        f"torch {machine['torch_version']}, onnxruntime "
        f"{machine.get('onnxruntime_version') or 'not installed'}, int8kit path "
        f"{machine.get('int8kit_cpu_info', {}).get('active_path')})")
    if H.quiet_machine_warning():
        log(H.quiet_machine_warning())
    # The int8 yardstick: int8kit's tight vpdpbusd loop at each thread count.
    peaks = {t: H.measure_vnni_peak(t, repeats=3 if quick else 5)["ops_per_s"]
             for t in thread_list}
    prev_threads = torch.get_num_threads()
    results, mismatches = [], []
    try:
        with tempfile.TemporaryDirectory() as tmpdir, torch.inference_mode():
            for (m, k, n) in shape_list:
                for t in thread_list:
                    torch.set_num_threads(t)
                    case = _Case(m, k, n, t, seed, tmpdir)
                    errs = case.errors()
                    if errs["int8kit"] > MAX_REL_ERR:
                        mismatches.append(f"{m}x{k}x{n}: int8kit rel.err {errs['int8kit']:.3g}")
                    probe = H.peak_probe(t, 2 * m * k * n, peaks[t])
                    fns = dict(case.fns, **({"vnni_peak": probe} if probe else {}))
                    groups = H.time_groups(fns, GROUPS, _time_fair, rounds=rounds,
                                           target_s=target_s,
                                           warmup_s=0.02 if quick else 0.05)
                    beside = groups["float"]
                    timings = {**beside, **groups["int8"]}
                    pk = probe.ops_per_s() if probe else None
                    cont = {}
                    for name in CONTENDERS:
                        if name in timings:
                            ops_s = 2 * m * k * n / timings[name].median_s
                            cont[name] = dict(timings[name].to_dict(), rel_err=errs[name],
                                              gflops=ops_s / 1e9,
                                              frac_peak=ops_s / pk if pk else None)
                        else:
                            cont[name] = {"na": case.na.get(name, "not run")}
                    base = timings["int8kit"].median_s
                    fbase = beside["int8kit"].median_s
                    speedup = {c: timings[c].median_s / base for c in timings}
                    speedup["torch_f32"] = beside["torch_f32"].median_s / fbase
                    results.append({
                        "shape": [m, k, n], "threads": t, "contenders": cont,
                        "peak_ops_per_s": pk,
                        "speedup": speedup,
                        "beside_float": {c: beside[c].median_s for c in GROUPS["int8"]
                                         if c in beside},
                    })
                    log(f"  {m}x{k}x{n} t={t}: int8kit {H.fmt_us(base)} us, vs f32 "
                        f"{H.fmt_ratio(speedup['torch_f32'])}")
                    del case
                    gc.collect()
    finally:
        torch.set_num_threads(prev_threads)
    payload = {"benchmark": "linear", "machine": machine, "results": results,
               "vnni_peak_ops_per_s": peaks,
               "mismatches": mismatches, "footnotes": _footnotes(),
               "settings": {"shapes": [list(s) for s in shape_list], "threads": thread_list,
                            "quick": quick, "rounds": rounds, "target_s": target_s,
                            "seed": seed}}
    if transformer:
        payload["transformer"] = run_transformer(thread_list, quick=quick, seed=seed, out=out)
    payload["loadavg_end"] = H.loadavg()
    payload["elapsed_s"] = time.perf_counter() - t_begin
    log()
    log(render(payload))
    if json_path:
        H.write_json(json_path, payload)
        log(f"\nJSON written to {json_path}")
    return payload


# ----------------------------------------------------------------------- end to end

def encoder(seed: int = 0, layers: int = 6, d_model: int = 384, heads: int = 12,
            ffn: int = 1536) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


def _no_fused_path(model: nn.Module) -> nn.Module:
    """TransformerEncoderLayer's fused fast path reads linear1.weight as a float tensor,
    so a model with swapped linears must take the ordinary path (int8kit.quantize_dynamic
    does this itself; torch.ao's quantized model crashes in inference mode without it).
    A forward pre-hook is the documented condition that turns the fused path off."""
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer):
            m.register_forward_pre_hook(lambda mod, args: None)
    return model


def _projection_macs(model: nn.Module) -> dict[str, int]:
    """Projection MACs per token of each module that owns projections: every
    nn.MultiheadAttention (q, k, v and out: in_proj is a raw parameter, not a Linear) and
    every nn.Linear outside one (the report names the same modules)."""
    macs: dict[str, int] = {}
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in macs):
            continue  # out_proj: counted with its attention
        if isinstance(m, nn.MultiheadAttention):
            macs[name] = m.embed_dim * (2 * m.embed_dim + m.kdim + m.vdim)
        elif isinstance(m, nn.Linear):
            macs[name] = m.in_features * m.out_features
    return macs


def run_transformer(threads=(1, 2), quick: bool = False, seed: int = 0, batch: int = 8,
                    seq: int = 128, out=None) -> dict:
    """Float vs int8kit vs torch.ao dynamic quantization of a 6-layer encoder."""
    out = out or sys.stdout
    float_model = encoder(seed)
    int8_model = int8kit.quantize_dynamic(float_model)
    report = int8_model.int8kit_report
    ao_model = _no_fused_path(_quiet(lambda: torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(float_model), {nn.Linear}, dtype=torch.qint8)))
    ao_linear = torch.ao.nn.quantized.dynamic.Linear
    ao_converted = sum(isinstance(m, ao_linear) for m in ao_model.modules())
    unfused = _no_fused_path(copy.deepcopy(float_model))
    x = torch.randn(batch, seq, float_model.layers[0].linear1.in_features,
                    generator=torch.Generator().manual_seed(seed + 1))
    models = {"float32": float_model, "float32_unfused": unfused, "int8kit": int8_model,
              "torch_ao": ao_model}
    fns = {name: (lambda mod=mod: mod(x)) for name, mod in models.items()}
    # The converted share of the projection MACs says how much int8 can help.
    macs = _projection_macs(float_model)
    d = float_model.layers[0].linear1.in_features
    res = {"config": {"layers": len(float_model.layers), "d_model": d,
                      "heads": float_model.layers[0].self_attn.num_heads,
                      "ffn": float_model.layers[0].linear1.out_features, "batch": batch,
                      "seq": seq},
           "report": report.to_dict(), "torch_ao_converted": ao_converted,
           "linear_macs_converted_share": sum(macs[r.name] for r in report.converted)
           / sum(macs.values()),
           "runs": []}
    prev = torch.get_num_threads()
    try:
        with torch.inference_mode():
            ref = float_model(x)
            cos = {n: float(torch.nn.functional.cosine_similarity(
                fn().flatten(), ref.flatten(), dim=0)) for n, fn in fns.items()}
            for t in H.parse_int_list(threads):
                torch.set_num_threads(t)
                tm = _time_fair(fns, rounds=None, target_s=1.0 if quick else 6.0,
                                warmup_s=0.1)
                res["runs"].append({"threads": t, "contenders": {
                    n: dict(tm[n].to_dict(), cosine=cos[n]) for n in fns}})
                print(f"  transformer t={t}: float {tm['float32'].median_s * 1e3:.1f} ms, int8kit "
                      f"{tm['int8kit'].median_s * 1e3:.1f} ms, torch.ao "
                      f"{tm['torch_ao'].median_s * 1e3:.1f} ms", file=out, flush=True)
    finally:
        torch.set_num_threads(prev)
    return res


# ----------------------------------------------------------------------- output

def render(payload: dict) -> str:
    rows = []
    for r in payload["results"]:
        shape = "x".join(map(str, r["shape"]))
        for name in CONTENDERS:
            c = r["contenders"][name]
            if "na" in c:
                rows.append([shape, r["threads"], LABELS[name], "n/a", "", "", "", "",
                             f"({c['na']})"])
            else:
                sp = "" if name == "int8kit" else H.fmt_ratio(r["speedup"][name])
                rows.append([shape, r["threads"], LABELS[name], H.fmt_us(c["median_s"]),
                             H.fmt_pct(c["spread_iqr_rel"]), H.fmt_pct(c.get("frac_peak")), sp,
                             f"{c['rel_err']:.1e}", ""])
            shape = ""
        rows.append([""] * 9)
    lines = [H.format_table(["shape MxKxN", "thr", "contender", "median us", "spread", "%peak",
                             "speedup", "rel.err", ""], rows[:-1], align="lrlrrrrrl")]
    srows = [["x".join(map(str, r["shape"])), r["threads"]]
             + [H.fmt_ratio(r["speedup"].get(c)) for c in CONTENDERS[1:]]
             for r in payload["results"]]
    lines += ["", "Summary: peer median / int8kit median (>1: int8kit faster)",
              H.format_table(["shape", "thr"] + CONTENDERS[1:], srows)]
    tr = payload.get("transformer")
    if tr:
        cfg = tr["config"]
        lines += ["", f"Transformer encoder ({cfg['layers']} layers, d_model {cfg['d_model']}, "
                      f"{cfg['heads']} heads, FFN {cfg['ffn']}, batch {cfg['batch']} x seq "
                      f"{cfg['seq']}), inference_mode"]
        trow = []
        for run_ in tr["runs"]:
            c = run_["contenders"]
            base = c["float32"]["median_s"]
            for n, v in c.items():
                trow.append([run_["threads"], n, f"{v['median_s'] * 1e3:.1f}",
                             H.fmt_pct(v["spread_iqr_rel"]), H.fmt_ratio(base / v["median_s"]),
                             f"{v['cosine']:.6f}"])
        lines.append(H.format_table(["thr", "model", "median ms", "spread", "speedup vs f32",
                                     "cosine vs f32"], trow, align="rlrrrr"))
        rep = tr["report"]
        kinds = Counter(r["module_type"] for r in rep["layers"] if r["converted"])
        what = ", ".join(f"{n} {t}" + (" (q, k, v and out projections each)"
                                       if t == "MultiheadAttention" else "")
                         for t, n in kinds.items()) or "nothing"
        lines.append(f"int8kit converted {what}; skipped {rep['skipped']}. torch.ao "
                     f"converted {tr['torch_ao_converted']} Linear layers (not the attention "
                     "projections: in_proj is no Linear, out_proj is excluded). int8kit's "
                     f"converted layers hold {tr['linear_macs_converted_share']:.0%} of the "
                     "projection MACs. "
                     "float32 uses torch's fused encoder kernel; float32_unfused, int8kit and "
                     "torch.ao run the ordinary layer path (see _no_fused_path).")
    lines += [""] + [f"- {f}" for f in payload["footnotes"]]
    if payload["mismatches"]:
        lines += ["MISMATCHES:"] + payload["mismatches"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default=None, help="indices into SHAPES or MxKxN, comma-separated")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--no-transformer", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    payload = run(a.shapes, a.threads, a.quick, a.rounds, a.json,
                  transformer=not a.no_transformer)
    return 1 if payload["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
