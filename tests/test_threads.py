"""Determinism across thread counts and correctness under concurrent calls.

Shapes are chosen so the driver really splits the work (it gives each thread at least 2^20
multiply-adds, columns in units of 48 and rows in units of 8; activation quantization at
least 2^16 elements per thread): one shape splits columns, one splits rows.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import int8kit
from int8kit import ops

PATHS = int8kit.cpu_info()["supported_paths"]
THREADS = (1, 2, 3, 4)
# (M, K, N): column split (N = 256 -> 6 units), row split (N = 16 -> 1 unit, 32 row units).
SPLIT_SHAPES = [(64, 256, 256), (256, 1024, 16), (37, 1031, 111)]


def _outputs(a, zp, p, a_scale, w_scale, bias, path, threads):
    return (
        ops.gemm_s32(a, zp, p, threads=threads, isa=path),
        ops.gemm_f32(a, zp, a_scale, p, w_scale, bias, relu=True, threads=threads, isa=path),
        ops.gemm_u8(a, zp, a_scale, p, w_scale, 0.05, 128, bias, threads=threads, isa=path),
    )


def _case(rng, ref, m, k, n):
    a = ref.rand_u8(rng, (m, k))
    w = ref.rand_s8(rng, (n, k))
    zp = rng.integers(0, 256, m).astype(np.int32)
    a_scale = rng.uniform(1e-3, 1e-2, m).astype(np.float32)
    w_scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    bias = rng.normal(0, 1, n).astype(np.float32)
    return a, w, zp, a_scale, w_scale, bias


@pytest.mark.parametrize("m,k,n", SPLIT_SHAPES)
def test_gemm_identical_for_every_thread_count(rng, ref, path, m, k, n):
    a, w, zp, a_scale, w_scale, bias = _case(rng, ref, m, k, n)
    p = ops.pack_weight(w)
    base = _outputs(a, zp, p, a_scale, w_scale, bias, path, 1)
    np.testing.assert_array_equal(base[0].astype(np.int64), ref.gemm_s32(a, zp, w))
    for threads in THREADS[1:]:
        for got, want, kind in zip(_outputs(a, zp, p, a_scale, w_scale, bias, path, threads),
                                   base, ("s32", "f32", "u8")):
            ref.assert_bit_identical(got, want, f"{kind} threads={threads} vs 1")


def test_more_threads_than_work(rng, ref, path):
    a, w, zp, a_scale, w_scale, bias = _case(rng, ref, 3, 9, 20)
    p = ops.pack_weight(w)
    base = _outputs(a, zp, p, a_scale, w_scale, bias, path, 1)
    for threads in (7, 64, 300):
        for got, want in zip(_outputs(a, zp, p, a_scale, w_scale, bias, path, threads), base):
            ref.assert_bit_identical(got, want, f"threads={threads}")


def test_default_threads_follow_torch(rng, ref):
    a, w, zp, a_scale, w_scale, bias = _case(rng, ref, 64, 256, 256)
    p = ops.pack_weight(w)
    before = torch.get_num_threads()
    try:
        expected = ops.gemm_s32(a, zp, p, threads=1)
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            assert int8kit.cpu_info()["threads"] == n
            assert np.array_equal(ops.gemm_s32(a, zp, p), expected)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("per_row", [True, False], ids=["per_row", "per_tensor"])
def test_quantize_identical_for_every_thread_count(rng, ref, path, per_row):
    x = rng.normal(0, 1, (300, 1027)).astype(np.float32)
    x[-1, -1] = 40.0  # the tensor maximum in the last thread's part
    x[0, 0] = -35.0
    with ops.use_isa(path):
        base = ops.quantize_dynamic_u8(x, per_row=per_row, threads=1)
        for got, want in zip(base, ref.quantize_dynamic_u8(x, per_row)):
            np.testing.assert_array_equal(got, want)
        for threads in THREADS[1:]:
            out = ops.quantize_dynamic_u8(x, per_row=per_row, threads=threads)
            for got, want in zip(out, base):
                ref.assert_bit_identical(got, want, f"quantize threads={threads}")


def test_repeated_calls_are_deterministic(rng, ref, path):
    a, w, zp, a_scale, w_scale, bias = _case(rng, ref, 64, 256, 256)
    p = ops.pack_weight(w)
    first = _outputs(a, zp, p, a_scale, w_scale, bias, path, 4)
    for _ in range(5):
        for got, want in zip(_outputs(a, zp, p, a_scale, w_scale, bias, path, 4), first):
            ref.assert_bit_identical(got, want, "repeat")


def test_concurrent_calls_from_python_threads(rng, ref):
    """Several Python threads share one packed weight and call every path, with and
    without inner threads, GEMM and quantization mixed; every result is checked against
    the single-threaded result computed beforehand."""
    m, k, n = 48, 512, 112
    w = ref.rand_s8(rng, (n, k))
    p = ops.pack_weight(w)
    w_scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    jobs = []
    for i in range(24):
        a = ref.rand_u8(rng, (m + i, k))
        zp = rng.integers(0, 256, m + i).astype(np.int32)
        a_scale = np.float32(rng.uniform(1e-3, 1e-2))
        path = PATHS[i % len(PATHS)]
        threads = (1, 2, 3)[i % 3]
        jobs.append((a, zp, a_scale, path, threads))
    xs = [rng.normal(0, 1, (64 + i, 1024)).astype(np.float32) for i in range(8)]

    expected_gemm = [(ref.gemm_s32(a, zp, w),
                      ops.gemm_f32(a, zp, a_scale, p, w_scale, threads=1, isa="scalar"))
                     for a, zp, a_scale, _, _ in jobs]
    expected_quant = [ref.quantize_dynamic_u8(x, per_row=True) for x in xs]

    def gemm_job(i):
        a, zp, a_scale, path, threads = jobs[i]
        out = []
        for _ in range(3):
            out.append((ops.gemm_s32(a, zp, p, threads=threads, isa=path),
                        ops.gemm_f32(a, zp, a_scale, p, w_scale, threads=threads, isa=path)))
        return out

    def quant_job(i):
        return [ops.quantize_dynamic_u8(xs[i], per_row=True, threads=1 + i % 3)
                for _ in range(3)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        gemm_futures = [pool.submit(gemm_job, i) for i in range(len(jobs))]
        quant_futures = [pool.submit(quant_job, i) for i in range(len(xs))]
        gemm_results = [f.result() for f in gemm_futures]
        quant_results = [f.result() for f in quant_futures]

    for i, results in enumerate(gemm_results):
        s32_ref, f32_ref = expected_gemm[i]
        for s32, f32 in results:
            np.testing.assert_array_equal(s32.astype(np.int64), s32_ref, err_msg=f"job {i}")
            ref.assert_bit_identical(f32, f32_ref, f"job {i} f32 ({jobs[i][3]})")
    for i, results in enumerate(quant_results):
        for out in results:
            for got, want in zip(out, expected_quant[i]):
                np.testing.assert_array_equal(got, want, err_msg=f"quant job {i}")


def test_concurrent_calls_with_torch_threads_busy(rng, ref):
    """int8kit calls while torch runs its own parallel matmuls in other threads."""
    a, w, zp, a_scale, w_scale, bias = _case(rng, ref, 64, 256, 256)
    p = ops.pack_weight(w)
    expected = ref.gemm_s32(a, zp, w)
    big = torch.randn(256, 256)

    def torch_work(_):
        return float((big @ big).sum())

    def our_work(_):
        return ops.gemm_s32(a, zp, p, threads=2)

    with ThreadPoolExecutor(max_workers=4) as pool:
        torch_futures = [pool.submit(torch_work, i) for i in range(8)]
        ours = [pool.submit(our_work, i) for i in range(8)]
        results = [f.result() for f in ours]
        [f.result() for f in torch_futures]
    for got in results:
        np.testing.assert_array_equal(got.astype(np.int64), expected)


_BACKEND_CHILD = """
import json, numpy as np, int8kit
from int8kit import ops
rng = np.random.default_rng(7)
a = rng.integers(0, 256, (256, 1024), dtype=np.uint8)
w = rng.integers(-128, 128, (96, 1024), dtype=np.int8)
x = rng.normal(0, 1, (300, 1027)).astype(np.float32)
p = ops.pack_weight(w)
print(json.dumps({"threading": int8kit.cpu_info()["threading"],
                  "s32": ops.gemm_s32(a, 5, p, threads=2).tolist(),
                  "q": ops.quantize_dynamic_u8(x, threads=2)[0].tolist()}))
"""


def test_own_pool_and_torch_openmp_team_give_identical_results(ref):
    """Parallel work runs on torch's OpenMP team when libgomp is loaded, else on int8kit's
    pool (forced with INT8KIT_THREADS=own); both must give the same bits."""
    import json

    outs = {}
    for mode in ("own", None):
        proc = ref.run_python(_BACKEND_CHILD, {"INT8KIT_THREADS": mode})
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outs["own"]["threading"] == "int8kit pool"
    assert outs[None]["threading"] in ("openmp (shared with torch)", "int8kit pool")
    assert outs["own"]["s32"] == outs[None]["s32"]
    assert outs["own"]["q"] == outs[None]["q"]


_THROW_CHILD = """
import json, numpy as np, int8kit
from int8kit import _C, ops
msgs = []
for n in (2, 3, 4):
    for t in range(n):
        try:
            _C._parallel_error_probe(n, t)
        except RuntimeError as e:
            msgs.append(str(e))
_C._parallel_error_probe(4, -1)  # no tid throws
a = np.ones((64, 256), np.uint8)
p = ops.pack_weight(np.ones((256, 256), np.int8))
ok = bool((ops.gemm_s32(a, 0, p, threads=4) == 256).all())
print(json.dumps({"threading": int8kit.cpu_info()["threading"], "msgs": msgs, "ok": ok}))
"""


@pytest.mark.parametrize("mode", ["own", None])
def test_an_exception_in_a_parallel_region_reaches_the_caller(ref, mode):
    """A tid that throws (std::bad_alloc inside a kernel) must not end the process, as an
    exception leaving a thread does, nor unwind the caller while other tids still run: it
    is rethrown on the caller's thread once all are done, whichever tid threw, on
    int8kit's pool and on torch's OpenMP team alike, and the next region runs normally."""
    import json

    proc = ref.run_python(_THROW_CHILD, {"INT8KIT_THREADS": mode})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if mode == "own":
        assert out["threading"] == "int8kit pool"
    assert out["msgs"] == [f"thrown by tid {t}" for n in (2, 3, 4) for t in range(n)]
    assert out["ok"]


_TEAM_CHILD = """
import json, os, numpy as np, torch, int8kit
from int8kit import ops
torch.set_num_threads(4)
rng = np.random.default_rng(7)
a = rng.integers(0, 256, (256, 1024), dtype=np.uint8)
p = ops.pack_weight(rng.integers(-128, 128, (96, 1024), dtype=np.int8))
x = rng.normal(0, 1, (300, 1027)).astype(np.float32)
tasks = lambda: set(os.listdir("/proc/self/task"))
torch.randn(512, 512) @ torch.randn(512, 512)  # torch's team of 4
ops.gemm_s32(a, 5, p)
before, seen = tasks(), set()
for _ in range(20):
    ops.quantize_dynamic_u8(x, threads=2)  # a 2-thread region ...
    seen |= tasks()
    ops.gemm_s32(a, 5, p)  # ... then a 4-thread one
    seen |= tasks()
print(json.dumps({"threading": int8kit.cpu_info()["threading"],
                  "new_threads": len(seen - before)}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_smaller_regions_keep_torchs_openmp_team(ref):
    """libgomp ends the threads a smaller team leaves out and starts new ones for the next
    bigger team (each a pthread_create: on 16 cores QuantLinear, a 6-thread quantize then a
    16-thread GEMM, ran 3x slower for it). Every region asks for torch's whole team, so
    alternating small and big regions start no thread."""
    import json

    proc = ref.run_python(_TEAM_CHILD, {})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["threading"] != "openmp (shared with torch)":
        pytest.skip("torch's OpenMP runtime is not loaded")
    assert out["new_threads"] == 0
