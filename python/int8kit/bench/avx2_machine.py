"""int8kit's AVX2 and AVX-VNNI paths against float32 as a CPU without AVX-512 runs it.

Those paths are for CPUs without AVX-512, and there float32 runs at AVX2 width too. On a
CPU with AVX-512, torch's float32 (MKL, oneDNN) runs 512-bit FMAs, twice the work per
instruction, so timing the forced paths beside it mixes two machines. This times them in
a child process where MKL and oneDNN are capped at AVX2 (they read these variables once,
when loaded), interleaved as every other rotation, and reports torch f32 median / int8kit
median per path. The child also checks each path's result against the default path's,
exactly.

    python -m int8kit.bench.avx2_machine --gemm 32x768x768 --threads 1,2 --json out.json
    python -m int8kit.bench.avx2_machine --conv dw128@56 --batch 1,8 --json out.json

From Python: ``measure_in_child(gemm=..., conv=..., ...)`` in the parent process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from . import _harness as H

ENV = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
       "ATEN_CPU_CAPABILITY": "avx2"}
PATHS = {"avx2": "int8kit_avx2", "avx_vnni": "int8kit_avxvnni"}


def _paths() -> dict:
    import int8kit
    have = int8kit.cpu_info()["supported_paths"]
    return {isa: name for isa, name in PATHS.items() if isa in have}


def _time(fns: dict, exact: bool, target_s: float, warmup_s: float, **row) -> dict:
    tm = H.time_interleaved(fns, target_s=target_s, warmup_s=warmup_s)
    f32 = tm["torch_f32"].median_s
    return dict(row, rounds=tm["torch_f32"].rounds, exact=exact, torch_f32_median_s=f32,
                median_s={k: t.median_s for k, t in tm.items()},
                vs_torch_f32={k: f32 / t.median_s for k, t in tm.items() if k != "torch_f32"})


def measure_gemm(shapes, threads, *, target_s: float, warmup_s: float, seed: int) -> list:
    """In the capped child: uint8 x prepacked int8 -> int32 per path vs F.linear float32."""
    import numpy as np
    import torch

    from int8kit import ops

    rows = []
    for m, k, n in shapes:
        for t in threads:
            torch.set_num_threads(t)
            rng = np.random.default_rng([seed, m, k, n])
            w = torch.from_numpy(rng.integers(-127, 128, size=(n, k), dtype=np.int8))
            a = torch.from_numpy(rng.integers(0, 256, size=(m, k), dtype=np.uint8))
            zp, packed = int(rng.integers(96, 160)), ops.pack_weight(w)
            x = ((a.float() - zp) * 0.01).contiguous()
            wf = (w.float() * 0.005).contiguous()
            fns = {"torch_f32": lambda: torch.nn.functional.linear(x, wf)}
            for isa, name in _paths().items():
                fns[name] = lambda isa=isa: ops.gemm_s32(a, zp, packed, threads=t, isa=isa)
            want = ops.gemm_s32(a, zp, packed, threads=t)
            exact = all(torch.equal(f(), want) for k, f in fns.items() if k != "torch_f32")
            rows.append(_time(fns, exact, target_s, warmup_s, shape=[m, k, n], threads=t,
                              ops=2 * m * k * n))
    return rows


def measure_conv(names, batches, threads, *, target_s: float, warmup_s: float) -> list:
    """In the capped child: the uint8 conv op (channels_last uint8 in, uint8 out, as
    StaticQuantConv2d runs it) per path vs float32 nn.Conv2d on channels_last input."""
    import numpy as np
    import torch

    from int8kit import conv_ops
    from .conv import SHAPES

    rows = []
    for name in names:
        ic, oc, k, st, pad, g, h = SHAPES[name]
        for b in batches:
            for t in threads:
                torch.set_num_threads(t)
                rng = np.random.default_rng([b, ic, oc, k, h])
                conv = torch.nn.Conv2d(ic, oc, k, st, pad, groups=g).eval().to(
                    memory_format=torch.channels_last)
                x = torch.randn(b, ic, h, h).contiguous(memory_format=torch.channels_last)
                xq = torch.from_numpy(rng.integers(0, 256, (b, h, h, ic), dtype=np.uint8))
                w = torch.from_numpy(rng.integers(-127, 128, (oc, ic // g, k, k), dtype=np.int8))
                p = conv_ops.pack_conv_weight(w, st, pad, 1, g)
                ws = torch.full((oc,), 0.01)
                args = (xq, 120, 0.02, p, ws, 0.05, 10)
                fns = {"torch_f32": lambda: conv(x)}
                for isa, key in _paths().items():
                    fns[key] = lambda isa=isa: conv_ops.conv2d_u8(*args, threads=t, isa=isa)
                want = conv_ops.conv2d_u8(*args, threads=t)
                exact = all(torch.equal(f(), want) for k, f in fns.items() if k != "torch_f32")
                oh = (h + 2 * pad - k) // st + 1
                with torch.no_grad():
                    rows.append(_time(fns, exact, target_s, warmup_s, shape=name, batch=b,
                                      threads=t, ops=2 * b * oh * oh * oc * (ic // g) * k * k))
    return rows


def measure_in_child(*, gemm=(), conv=(), batches=(1, 8), threads=(1,), target_s: float = 0.3,
                     warmup_s: float = 0.1, seed: int = 0, timeout_s: float = 900) -> dict:
    """Runs measure_gemm / measure_conv in a child process with float32 capped at AVX2.
    Returns {"env", "gemm": rows, "conv": rows}, or {"env", "error"} if this CPU runs
    neither path or the child failed."""
    if not _paths():
        return {"env": ENV, "error": "this CPU runs neither the AVX2 nor the AVX-VNNI path"}
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "narrow.json")
        cmd = [sys.executable, "-m", "int8kit.bench.avx2_machine",
               "--threads", ",".join(map(str, threads)), "--batch", ",".join(map(str, batches)),
               "--target-s", str(target_s), "--warmup-s", str(warmup_s), "--seed", str(seed),
               "--json", path]
        if gemm:
            cmd += ["--gemm", ",".join("x".join(map(str, s)) for s in gemm)]
        if conv:
            cmd += ["--conv", ",".join(conv)]
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"env": ENV, "error": f"timed out after {timeout_s:.0f} s"}
        if r.returncode != 0 or not os.path.exists(path):
            return {"env": ENV, "error": (r.stderr or r.stdout)[-2000:]}
        with open(path) as f:
            return dict(json.load(f), env=ENV)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gemm", default="", help="comma-separated MxKxN shapes")
    ap.add_argument("--conv", default="", help="comma-separated names from bench.conv.SHAPES")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--target-s", type=float, default=0.3)
    ap.add_argument("--warmup-s", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    missing = [k for k, v in ENV.items() if os.environ.get(k) != v]
    if missing:
        print(f"set {', '.join(missing)} before starting Python (measure_in_child does)",
              file=sys.stderr)
        return 2
    threads = H.parse_int_list(args.threads)
    kw = dict(target_s=args.target_s, warmup_s=args.warmup_s)
    out = {"gemm": [], "conv": []}
    if args.gemm:
        out["gemm"] = measure_gemm(H.parse_shapes(args.gemm, [], 3), threads, seed=args.seed, **kw)
    if args.conv:
        out["conv"] = measure_conv([n for n in args.conv.split(",") if n],
                                   H.parse_int_list(args.batch), threads, **kw)
    H.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
