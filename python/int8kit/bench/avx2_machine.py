"""The AVX2 path against float32 as a CPU without AVX-512 would run it.

The AVX2 path is for CPUs without AVX-512, and there float32 runs at AVX2 width too. On
a CPU with AVX-512, torch's float32 GEMM (MKL) runs 512-bit FMAs, twice the work per
instruction, so timing the forced AVX2 path beside it mixes two machines. This times both
in a child process where MKL and oneDNN are capped at AVX2 (they read these variables once,
when loaded), interleaved as every other rotation, and reports torch f32 median / int8kit
AVX2 median. The child also checks the AVX2 result against the default path, exactly.

    python -m int8kit.bench.avx2_machine --shapes 32x768x768 --threads 1,2 --json out.json

From Python: ``measure_in_child(shapes, threads, ...)`` in the parent process.
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


def measure(shapes, threads, *, target_s: float, warmup_s: float, seed: int) -> list[dict]:
    """Runs in the capped child: one rotation (float32, AVX2 path) per shape and thread
    count. Returns one row per (shape, threads)."""
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
            fns = {"torch_f32": lambda: torch.nn.functional.linear(x, wf),
                   "int8kit_s32_avx2": lambda: ops.gemm_s32(a, zp, packed, threads=t,
                                                            isa="avx2")}
            exact = torch.equal(fns["int8kit_s32_avx2"](), ops.gemm_s32(a, zp, packed, threads=t))
            tm = H.time_interleaved(fns, target_s=target_s, warmup_s=warmup_s)
            f32, avx2 = tm["torch_f32"].median_s, tm["int8kit_s32_avx2"].median_s
            rows.append({"shape": [m, k, n], "threads": t, "rounds": tm["torch_f32"].rounds,
                         "torch_f32_median_s": f32, "avx2_median_s": avx2,
                         "torch_f32_gflops": 2 * m * k * n / f32 / 1e9,
                         "avx2_gops": 2 * m * k * n / avx2 / 1e9,
                         "avx2_vs_torch_f32": f32 / avx2, "exact": exact})
    return rows


def measure_in_child(shapes, threads, *, target_s: float, warmup_s: float, seed: int = 0,
                     timeout_s: float = 900) -> dict:
    """Runs ``measure`` in a child process with float32 capped at AVX2. Returns
    {"env", "rows"} or, if the child failed, {"env", "error"}."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "avx2.json")
        cmd = [sys.executable, "-m", "int8kit.bench.avx2_machine",
               "--shapes", ",".join("x".join(map(str, s)) for s in shapes),
               "--threads", ",".join(map(str, threads)), "--target-s", str(target_s),
               "--warmup-s", str(warmup_s), "--seed", str(seed), "--json", path]
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"env": ENV, "error": f"timed out after {timeout_s:.0f} s"}
        if r.returncode != 0 or not os.path.exists(path):
            return {"env": ENV, "error": (r.stderr or r.stdout)[-2000:]}
        with open(path) as f:
            return {"env": ENV, "rows": json.load(f)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", required=True, help="comma-separated MxKxN shapes")
    ap.add_argument("--threads", default="1,2")
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
    rows = measure(H.parse_shapes(args.shapes, [], 3), H.parse_int_list(args.threads),
                   target_s=args.target_s, warmup_s=args.warmup_s, seed=args.seed)
    H.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
