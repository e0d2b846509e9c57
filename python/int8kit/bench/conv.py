"""int8 conv2d microbenchmark: int8kit's QuantConv2d against float32 and the int8 convs
users would otherwise pick, all in this process, interleaved round-robin, medians.

Contenders (float NCHW in and out unless noted):
  int8kit_cl     QuantConv2d on a channels_last input (its native layout)
  int8kit        QuantConv2d on a contiguous input
  int8kit_op     StaticQuantConv2d.forward_quantized: uint8 channels_last in, uint8 out (the
                 op alone, what each layer of a statically quantized model runs)
  f32            nn.Conv2d, contiguous;      f32_cl: nn.Conv2d, channels_last
  ao_x86 / ao_fbgemm
                 torch.ao static quantized Conv2d, engine x86 / fbgemm: "_op" = the quantized
                 op alone (quint8 in and out), "_e2e" = with quantize_per_tensor before and
                 dequantize after (what a float model pays)
  ort_op / ort_e2e
                 ONNX Runtime QLinearConv alone (uint8 in/out), and QuantizeLinear ->
                 QLinearConv -> DequantizeLinear (float in/out), when onnxruntime is installed

Each measurement gives two rows, so that like is compared with like: "op" (int8kit_op vs
the peers' _op and float32) and "float" (int8kit_cl vs the peers' _e2e and float32).

Run: PYTHONPATH=python python benchmarks/bench_conv.py  (or: python -m int8kit.bench.conv) [--threads 1,2] [--batch 1,8]
     [--shapes resnet,depthwise] [--quick] [--json bench_out/bench_conv.json]
or ``from int8kit.bench import conv; conv.run(...)``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from torch import nn

from . import _harness as H
from . import avx2_machine

from int8kit import ops
from int8kit.nn.conv import QuantConv2d
from int8kit.nn.static import StaticQuantConv2d

warnings.filterwarnings("ignore")  # torch.ao's deprecation notice on every call

# name -> (in, out, kernel, stride, padding, groups, H)
SHAPES = {
    "r18_64@56": (64, 64, 3, 1, 1, 1, 56),
    "r18_128@28": (128, 128, 3, 1, 1, 1, 28),
    "r18_256@14": (256, 256, 3, 1, 1, 1, 14),
    "r18_512@7": (512, 512, 3, 1, 1, 1, 7),
    "down1x1_64>128@56": (64, 128, 1, 2, 0, 1, 56),
    "dw128@56": (128, 128, 3, 1, 1, 128, 56),
    "dw32@112": (32, 32, 3, 1, 1, 32, 112),
    "dw96@56s2": (96, 96, 3, 2, 1, 96, 112),
    "dw144@56": (144, 144, 3, 1, 1, 144, 56),
}
QUICK_SHAPES = ["r18_128@28", "down1x1_64>128@56", "dw128@56"]
SHAPE_SETS = {"resnet": [k for k in SHAPES if k.startswith("r18")],
              "downsample": ["down1x1_64>128@56"],
              "depthwise": [k for k in SHAPES if k.startswith("dw")]}


def _minmax_qparams(t: torch.Tensor) -> tuple[float, int]:
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    obs(t)
    s, z = obs.calculate_qparams()
    return float(s), int(z)


# Contenders compared in each row mode (see the module docstring).
MODES = {
    "op": ("int8kit_op", ("ao_x86_op", "ao_fbgemm_op", "ort_op", "f32", "f32_cl")),
    "float": ("int8kit_cl", ("int8kit", "ao_x86_e2e", "ao_fbgemm_e2e", "ort_e2e", "f32",
                             "f32_cl")),
}

# Timed in three separate rotations (see _harness.time_groups): the quantized ops among
# themselves, the float-in/float-out int8 contenders among themselves (their quantize and
# dequantize passes are float work, which slows the int8 kernels after them: r18_64@56
# batch 8, every op 3% slower beside them), and float32 beside int8kit, which gives the
# speedups vs float32. "vnni_peak" (a _harness.PeakProbe) gives "% of peak" its yardstick
# in the ops' rotation.
FLOATS = ("f32", "f32_cl")
GROUPS = {"op": ["int8kit_op", "ao_x86_op", "ao_fbgemm_op", "ort_op", "vnni_peak"],
          "e2e": ["int8kit_cl", "int8kit", "ao_x86_e2e", "ao_fbgemm_e2e", "ort_e2e"],
          "float": ["f32", "f32_cl", "int8kit_op", "int8kit_cl"]}


def _ao_conv(conv: nn.Conv2d, x: torch.Tensor, engine: str):
    """torch.ao static quantized Conv2d (per-channel weights) calibrated on x."""
    import torch.ao.nn.quantized as nnq
    torch.backends.quantized.engine = engine
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    obs(x)
    s, z = (float(v) for v in obs.calculate_qparams())
    y = conv(x)
    oobs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    oobs(y)
    os_, oz = (float(v) for v in oobs.calculate_qparams())
    w = conv.weight.detach()
    ws = w.abs().amax(dim=(1, 2, 3)).clamp(min=1e-8) / 127.5
    wq = torch.quantize_per_channel(w, ws.double(), torch.zeros(w.shape[0], dtype=torch.long),
                                    0, torch.qint8)
    q = nnq.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                   conv.padding, groups=conv.groups)
    q.set_weight_bias(wq, conv.bias.detach())
    q.scale, q.zero_point = os_, int(oz)
    xq = torch.quantize_per_tensor(x.contiguous(memory_format=torch.channels_last), s, int(z),
                                   torch.quint8)

    def op():
        torch.backends.quantized.engine = engine
        return q(xq)

    def e2e():
        torch.backends.quantized.engine = engine
        return q(torch.quantize_per_tensor(x, s, int(z), torch.quint8)).dequantize()
    return op, e2e


def _ort(conv: nn.Conv2d, x: torch.Tensor, threads: int):
    """ORT sessions: QLinearConv alone, and Quantize -> QLinearConv -> Dequantize."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    xa = x.numpy()
    s = np.float32((max(xa.max(), 0) - min(xa.min(), 0)) / 255)
    z = np.uint8(round(-min(xa.min(), 0) / s))
    w = conv.weight.detach().numpy()
    ws = (np.abs(w).max(axis=(1, 2, 3)) / 127.5).astype(np.float32)
    wq = np.clip(np.round(w / ws[:, None, None, None]), -128, 127).astype(np.int8)
    y = conv(x).detach().numpy()
    ys = np.float32((max(y.max(), 0) - min(y.min(), 0)) / 255)
    yz = np.uint8(round(-min(y.min(), 0) / ys))
    bias = np.round(conv.bias.detach().numpy() / (s * ws)).astype(np.int32)
    inits = [numpy_helper.from_array(np.array(s), "xs"), numpy_helper.from_array(np.array(z), "xz"),
             numpy_helper.from_array(wq, "w"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(np.zeros(len(ws), np.int8), "wz"),
             numpy_helper.from_array(np.array(ys), "ys"), numpy_helper.from_array(np.array(yz), "yz"),
             numpy_helper.from_array(bias, "b")]
    attrs = dict(kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                 pads=list(conv.padding) * 2, group=conv.groups)
    qconv = helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                             ["yq"], **attrs)

    def session(nodes, inp, out, in_t, out_t):
        g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info(inp, in_t, list(xa.shape))],
                              [helper.make_tensor_value_info(out, out_t, None)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = min(onnx.IR_VERSION, 10)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

    s_op = session([qconv], "xq", "yq", TensorProto.UINT8, TensorProto.UINT8)
    s_e2e = session([helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), qconv,
                     helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])],
                    "x", "y", TensorProto.FLOAT, TensorProto.FLOAT)
    xq = np.clip(np.round(xa / s) + z, 0, 255).astype(np.uint8)
    return (lambda: s_op.run(None, {"xq": xq})), (lambda: s_e2e.run(None, {"x": xa}))


def _contenders(name: str, batch: int, threads: int):
    ic, oc, k, st, pad, g, h = SHAPES[name]
    torch.manual_seed(0)
    conv = nn.Conv2d(ic, oc, k, st, pad, groups=g).eval()
    conv_cl = nn.Conv2d(ic, oc, k, st, pad, groups=g).eval().to(memory_format=torch.channels_last)
    conv_cl.load_state_dict(conv.state_dict())
    x = torch.randn(batch, ic, h, h)
    xcl = x.contiguous(memory_format=torch.channels_last)
    q = QuantConv2d.from_float(conv)
    xs, xz = _minmax_qparams(x)
    ys, yz = _minmax_qparams(conv(x))
    sq = StaticQuantConv2d.from_float(conv, xs, xz)
    xq = sq.quantize_input(xcl)
    c = {"int8kit_cl": lambda: q(xcl), "int8kit": lambda: q(x),
         "int8kit_op": lambda: sq.forward_quantized(xq, out=(ys, yz)),
         "f32": lambda: conv(x), "f32_cl": lambda: conv_cl(xcl)}
    for eng in ("x86", "fbgemm"):
        if eng in torch.backends.quantized.supported_engines:
            c[f"ao_{eng}_op"], c[f"ao_{eng}_e2e"] = _ao_conv(conv, x, eng)
    try:
        c["ort_op"], c["ort_e2e"] = _ort(conv, x, threads)
    except ImportError:
        pass
    oh = (h + 2 * pad - k) // st + 1
    ops_count = 2 * batch * oh * oh * oc * (ic // g) * k * k
    return c, ops_count


def shape_names(shapes) -> list:
    """Shape names from names and set names ("resnet", "downsample", "depthwise")."""
    names = [n for s in shapes for n in SHAPE_SETS.get(s, [s])]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"shapes: unknown {unknown}; known: {list(SHAPE_SETS) + list(SHAPES)}")
    return names


def run(shapes=("resnet", "downsample", "depthwise"), batches=(1, 8), threads=(1, 2),
        target_s: float = 0.15, quick: bool = False) -> dict:
    """Times every contender per (shape, batch, threads); returns medians, ratios, peaks."""
    if quick and shapes == ("resnet", "downsample", "depthwise"):
        shapes = QUICK_SHAPES
    names = shape_names(shapes)
    if quick:
        batches, target_s = batches[:1], 0.05
    prev = torch.get_num_threads()
    rows = []
    peaks = {t: H.measure_vnni_peak(t, repeats=3)["ops_per_s"] for t in threads}
    try:
        with torch.no_grad():
            for t in threads:
                torch.set_num_threads(t)
                for name in names:
                    for b in batches:
                        fns, nops = _contenders(name, b, t)
                        probe = H.peak_probe(t, nops, peaks[t])
                        if probe:
                            fns["vnni_peak"] = probe
                        groups = H.time_groups(fns, GROUPS, target_s=target_s)
                        pk = probe.ops_per_s() if probe else None
                        beside = groups["float"]
                        res = {**beside, **groups["op"], **groups["e2e"]}
                        for mode, (ours, peers) in MODES.items():
                            keep = [ours] + [k for k in peers if k in res]
                            med = {k: res[k].median_s for k in keep}
                            speedup = {k: (beside[k].median_s / beside[ours].median_s
                                           if k in FLOATS else v / med[ours])
                                       for k, v in med.items()}
                            rows.append({
                                "shape": name, "mode": mode, "int8kit_key": ours,
                                "batch": b, "threads": t,
                                "median_s": med, "spread": {k: res[k].spread for k in keep},
                                "beside_float": {ours: beside[ours].median_s},
                                "gops": nops / med[ours] / 1e9,
                                "peak_ops_per_s": pk,
                                "peak_frac": nops / med[ours] / pk if pk else None,
                                "speedup": speedup})
    finally:
        torch.set_num_threads(prev)
    # The AVX2 and AVX-VNNI paths against float32 at AVX2 width, as a CPU without AVX-512
    # runs both (a child process; see avx2_machine).
    narrow = avx2_machine.measure_in_child(conv=names, batches=batches, threads=threads,
                                           target_s=target_s, warmup_s=0.05)
    mismatches = [f"{r['shape']} b={r['batch']} t={r['threads']}: a narrow path differs "
                  "from the default path" for r in narrow.get("conv", []) if not r["exact"]]
    return {"machine": H.machine_info(), "vnni_peak_ops_per_s": peaks, "rows": rows,
            "isa": ops.get_isa(), "narrow_machine": narrow, "mismatches": mismatches}


def table(result: dict) -> str:
    heads = ["shape", "mode", "b", "t", "int8kit us", "Gop/s", "%peak", "peer / int8kit"]
    out = []
    for r in result["rows"]:
        ours = MODES[r["mode"]][0]
        ratios = " ".join(f"{k} {v:.2f}" for k, v in r["speedup"].items() if k != ours)
        out.append([r["shape"], r["mode"], r["batch"], r["threads"],
                    f"{r['median_s'][ours] * 1e6:.0f}", f"{r['gops']:.0f}",
                    "n/a" if r["peak_frac"] is None else f"{100 * r['peak_frac']:.0f}%", ratios])
    note = ("peer / int8kit = the peer's median / int8kit's (> 1: int8kit faster). op rows: "
            "int8kit_op and the peers' quantized ops alone (uint8 in and out); float rows: "
            "QuantConv2d (int8kit_cl) and the peers' _e2e, float in and out. Each row's int8 "
            "contenders are timed in a rotation of their own, float32 beside int8kit in "
            "another (int8 kernels run 9-16 % slower for a while after float32 FMA work); "
            "f32 ratios come from the last.")
    text = H.format_table(heads, out, align="llrrrrrl") + "\n" + note
    narrow = result.get("narrow_machine") or {}
    if narrow.get("conv"):
        nrows = [[r["shape"], r["batch"], r["threads"],
                  " ".join(f"{k.replace('int8kit_', '')} {v:.2f}x"
                           for k, v in r["vs_torch_f32"].items()),
                  "ok" if r["exact"] else "MISMATCH"] for r in narrow["conv"]]
        text += ("\n\nAVX2 / AVX-VNNI paths, float32 capped at AVX2 (float32 median / path "
                 "median):\n" + H.format_table(["shape", "b", "t", "vs float32", "exact"],
                                               nrows, align="lrrll"))
    elif narrow.get("error"):
        text += f"\n\nAVX2-width comparison failed: {narrow['error']}"
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--shapes", default="resnet,downsample,depthwise")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    warn = H.quiet_machine_warning()
    if warn:
        print(warn)
    res = run(a.shapes.split(","), H.parse_int_list(a.batch), H.parse_int_list(a.threads),
              quick=a.quick)
    print(f"VNNI peak (ops/s): {res['vnni_peak_ops_per_s']}; path {res['isa']}")
    print(table(res))
    if a.json:
        print("wrote", H.write_json(a.json, res))


if __name__ == "__main__":
    main()
