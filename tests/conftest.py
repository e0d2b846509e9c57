"""Shared fixtures and numpy references for the int8kit CPU kernel tests.

The numpy references here are deliberately written from the numerics contract (the
comments in csrc/include/int8kit/gemm.h and quantize.h), not from the kernels:

* ``ref.gemm_s32``: exact int64 ``(a - zp) @ w.T``; it is the oracle of the scalar path,
  which is in turn the oracle of every vector path.
* ``ref.gemm_f32``: ``float(acc) * float32(a_scale * w_scale) + bias`` evaluated in float64
  (numpy has no float32 fma), ReLU optional.
* ``ref.requant_u8``: the uint8 requantization of a float64 result, plus a mask of the
  elements that lie so close to a rounding boundary that float32 and float64 may disagree.
* ``ref.quantize_dynamic_u8``: torch.ao MinMaxObserver(quint8) parameters and the
  ``q = clamp(rint(fma(x, 1 / scale, zp)), 0, 255)`` quantizer (torch's order).

Any test that takes a ``path`` argument is run once per kernel path this CPU supports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

import int8kit
from int8kit import ops

ALL_PATHS = ("scalar", "avx2", "avx_vnni", "avx512_vnni", "amx_int8")
SUPPORTED_PATHS = list(int8kit.cpu_info()["supported_paths"])
UNSUPPORTED_PATHS = [p for p in ALL_PATHS if p not in SUPPORTED_PATHS]
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def pytest_report_header(config):
    info = int8kit.cpu_info()
    return (f"int8kit kernel paths: supported={info['supported_paths']} "
            f"active={info['active_path']} ({info['active_path_reason']})")


def pytest_generate_tests(metafunc):
    # Every test that names `path` runs on each kernel path this CPU (and build) can run,
    # unless the test parametrizes `path` itself.
    if "path" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if "path" in names:
            return
    metafunc.parametrize("path", SUPPORTED_PATHS)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test id: deterministic, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def paths():
    return list(SUPPORTED_PATHS)


@pytest.fixture(autouse=True)
def _restore_active_isa():
    """Tests may force a path process-wide (ops.set_isa / use_isa); undo it afterwards."""
    before = ops.get_isa()
    yield
    if ops.get_isa() != before:
        ops.set_isa(before)


# --------------------------------------------------------------------------- references


def ref_gemm_s32(a, a_zero_point, w) -> np.ndarray:
    """Exact sum_k (a[m,k] - zp[m]) * w[n,k] in int64 (a may be uint8 or int8)."""
    a64 = np.asarray(a).astype(np.int64)
    zp = np.asarray(a_zero_point, dtype=np.int64).reshape(-1, 1)
    acc = (a64 - zp) @ np.asarray(w).astype(np.int64).T
    assert acc.size == 0 or (acc.min() >= INT32_MIN and acc.max() <= INT32_MAX), \
        "test bug: the exact result does not fit int32"
    return acc


def ref_gemm_f32(acc, a_scale, w_scale, bias=None, relu=False) -> np.ndarray:
    """float64 evaluation of fmaf(float(acc), a_scale[m] * w_scale[n], bias[n])."""
    acc = np.asarray(acc)
    m, n = acc.shape
    a_s = np.broadcast_to(np.asarray(a_scale, np.float32).reshape(-1, 1), (m, 1))
    w_s = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(1, -1), (1, n))
    s = (a_s * w_s).astype(np.float32)  # the kernel's float32 product, rounded once
    y = acc.astype(np.float32).astype(np.float64) * s.astype(np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float32).astype(np.float64).reshape(1, -1)
    if relu:
        y = np.maximum(y, 0.0)
    return y


def requant_inv_scale(out_scale) -> np.float32:
    return np.float32(1.0) / np.float32(out_scale)


def ref_requant_u8(y64, out_scale, out_zero_point, tol=1e-3):
    """(q, near): q = rint(clamp(y * inv_scale + zp, 0, 255)) in float64 (the zero point
    added before rounding, as torch's quantize); near marks the elements within tol of a .5
    rounding boundary, where float32 may round the other way."""
    t = np.asarray(y64, np.float64) * np.float64(requant_inv_scale(out_scale))
    t = np.clip(t + int(out_zero_point), 0, 255)
    q = np.rint(t).astype(np.int64)
    near = np.abs(np.abs(t - np.floor(t)) - 0.5) < tol
    return q, near


def assert_u8_close(got, y64, out_scale, out_zero_point):
    """Exact, except off-by-one where the float64 value sits on a rounding boundary."""
    q, near = ref_requant_u8(y64, out_scale, out_zero_point)
    got = np.asarray(got).astype(np.int64)
    assert got.shape == q.shape
    diff = np.abs(got - q)
    bad = (diff > 1) | ((diff == 1) & ~near)
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.size} outputs differ from the reference; first at "
        f"{np.argwhere(bad)[0].tolist()}: got {got[bad][0]}, expected {q[bad][0]}")


def ref_choose_qparams_u8(lo, hi):
    """torch.ao MinMaxObserver(quint8, per_tensor_affine) arithmetic, in float32."""
    lo = np.float32(min(np.float32(lo), np.float32(0)))
    hi = np.float32(max(np.float32(hi), np.float32(0)))
    scale = np.float32((hi - lo) / np.float32(255))
    scale = max(scale, np.float32(np.finfo(np.float32).eps))
    zp = np.float32(0) - np.rint(np.float32(lo / scale))
    zp = int(np.clip(zp, 0, 255))
    return np.float32(scale), zp


def ref_quantize_u8(x, scale, zp):
    """torch's order: q = clamp(rint(fma(x, 1/scale, zp)), 0, 255). The float64 product of
    two float32 values is exact; adding zp and rounding to float32 is then one rounding,
    except in double-rounding corner cases far rarer than these tests can reach."""
    inv = np.float32(1) / np.float32(scale)
    t = (np.asarray(x, np.float32).astype(np.float64) * np.float64(inv) + np.float64(zp))
    t = np.clip(t.astype(np.float32), 0, 255)
    return np.rint(t).astype(np.uint8)


def ref_quantize_dynamic_u8(x, per_row=True):
    x = np.asarray(x, np.float32)
    m = x.shape[0]
    if per_row:
        scale = np.empty(m, np.float32)
        zp = np.empty(m, np.int32)
        q = np.empty(x.shape, np.uint8)
        for i in range(m):
            scale[i], zp[i] = ref_choose_qparams_u8(x[i].min(), x[i].max())
            q[i] = ref_quantize_u8(x[i], scale[i], zp[i])
        return q, scale, zp
    if m == 0:
        return np.empty(x.shape, np.uint8), np.ones(1, np.float32), np.zeros(1, np.int32)
    s, z = ref_choose_qparams_u8(x.min(), x.max())
    return ref_quantize_u8(x, s, z), np.array([s], np.float32), np.array([z], np.int32)


def assert_bit_identical(x, y, what=""):
    """Same shape, dtype and bytes (stricter than value equality for floats)."""
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype, (what, x.shape, x.dtype, y.shape, y.dtype)
    if x.tobytes() != y.tobytes():
        bits = np.dtype(f"u{x.dtype.itemsize}")
        ne = np.argwhere(x.view(bits) != y.view(bits))
        i = tuple(ne[0])
        pytest.fail(f"{what}: outputs are not bit-identical ({len(ne)} differ; first at "
                    f"{list(i)}: {x[i]!r} vs {y[i]!r})")


# ------------------------------------------------------------------------- random inputs


def rand_u8(rng, shape, extreme_frac=0.0):
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if extreme_frac:
        pick = rng.random(shape) < extreme_frac
        a[pick] = rng.choice(np.array([0, 255], np.uint8), size=int(pick.sum()))
    return a


def rand_s8(rng, shape, extreme_frac=0.0):
    w = rng.integers(-128, 128, size=shape, dtype=np.int8)
    if extreme_frac:
        pick = rng.random(shape) < extreme_frac
        w[pick] = rng.choice(np.array([-128, 127, 0], np.int8), size=int(pick.sum()))
    return w


# ------------------------------------------------------------------------- subprocesses


def run_python(code: str, env_updates: dict[str, str | None], timeout=120):
    """Runs `code` in a fresh interpreter that imports this same int8kit build."""
    env = dict(os.environ)
    pkg_root = str(Path(int8kit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key, value in env_updates.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def ref():
    """The numpy references and helpers above, for tests (and hypothesis tests)."""
    return types.SimpleNamespace(
        gemm_s32=ref_gemm_s32,
        gemm_f32=ref_gemm_f32,
        requant_u8=ref_requant_u8,
        requant_inv_scale=requant_inv_scale,
        assert_u8_close=assert_u8_close,
        choose_qparams_u8=ref_choose_qparams_u8,
        quantize_u8=ref_quantize_u8,
        quantize_dynamic_u8=ref_quantize_dynamic_u8,
        assert_bit_identical=assert_bit_identical,
        rand_u8=rand_u8,
        rand_s8=rand_s8,
        run_python=run_python,
        ALL_PATHS=ALL_PATHS,
        SUPPORTED_PATHS=list(SUPPORTED_PATHS),
        UNSUPPORTED_PATHS=list(UNSUPPORTED_PATHS),
    )
