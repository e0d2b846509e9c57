"""Fused epilogues: dequantize to float32 (+bias, ReLU) and requantize to uint8.

Two checks per case: against a numpy float reference of the formula (tight tolerance for
f32; exact for u8 except next to a rounding boundary), and bit-identity across all paths
(the strict check: every path evaluates the same fmaf, the same clamp and rounding).
"""

import itertools

import numpy as np
import pytest
import torch

import int8kit
from int8kit import ops

PATHS = int8kit.cpu_info()["supported_paths"]
# (48, 192, 80), (47, 1000, 33): AMX's 32- and 16-row tile steps, an odd panel, a K tail;
# (290, 128, 33): a block tall enough for its rows-outer order
SHAPES = [(1, 1, 1), (1, 40, 100), (3, 5, 17), (8, 64, 48), (9, 33, 50), (17, 130, 95),
          (33, 7, 16), (4, 257, 33), (48, 192, 80), (47, 1000, 33), (290, 128, 33)]
COMBOS = list(itertools.product([False, True], [False, True], ["tensor", "channel"],
                                ["tensor", "row"]))
COMBO_IDS = [f"bias{int(b)}-relu{int(r)}-w{w}-a{a}" for b, r, w, a in COMBOS]


def _case(rng, ref, m, k, n, with_bias, w_kind, a_kind, signed=False):
    a = (ref.rand_s8 if signed else ref.rand_u8)(rng, (m, k), 0.1)
    w = ref.rand_s8(rng, (n, k), 0.1)
    lo, hi = (-128, 128) if signed else (0, 256)
    zp = rng.integers(lo, hi, m).astype(np.int32) if a_kind == "row" else int(rng.integers(lo, hi))
    a_scale = (rng.uniform(1e-3, 5e-2, m).astype(np.float32) if a_kind == "row"
               else float(np.float32(rng.uniform(1e-3, 5e-2))))
    w_scale = (rng.uniform(1e-3, 5e-2, n).astype(np.float32) if w_kind == "channel"
               else float(np.float32(rng.uniform(1e-3, 5e-2))))
    acc = ref.gemm_s32(a, zp, w)
    typical = float(np.abs(ref.gemm_f32(acc, a_scale, w_scale)).mean()) + 1.0
    bias = rng.normal(0, typical, n).astype(np.float32) if with_bias else None
    return a, w, zp, a_scale, w_scale, bias, acc


def _assert_f32_close(got, y64):
    assert got.dtype == np.float32 and got.shape == y64.shape
    np.testing.assert_allclose(got.astype(np.float64), y64, rtol=1e-6, atol=1e-30)


# ------------------------------------------------------------------------------ float32


@pytest.mark.parametrize("with_bias,relu,w_kind,a_kind", COMBOS, ids=COMBO_IDS)
def test_f32_matches_reference_and_is_identical_across_paths(rng, ref, with_bias, relu,
                                                             w_kind, a_kind):
    for (m, k, n) in SHAPES:
        a, w, zp, a_scale, w_scale, bias, acc = _case(rng, ref, m, k, n, with_bias, w_kind,
                                                      a_kind)
        p = ops.pack_weight(w)
        y64 = ref.gemm_f32(acc, a_scale, w_scale, bias, relu)
        outs = {path: ops.gemm_f32(a, zp, a_scale, p, w_scale, bias, relu=relu, isa=path)
                for path in PATHS}
        for path, got in outs.items():
            _assert_f32_close(got, y64)
            if relu:
                assert (got >= 0).all()
            ref.assert_bit_identical(got, outs["scalar"], f"f32 {path} vs scalar {m, k, n}")


def test_f32_unit_scales_are_exact(rng, ref, path):
    m, k, n = 11, 77, 41
    a = ref.rand_u8(rng, (m, k), 0.3)
    w = ref.rand_s8(rng, (n, k), 0.3)
    zp = rng.integers(0, 256, m).astype(np.int32)
    p = ops.pack_weight(w)
    acc = ref.gemm_s32(a, zp, w)
    got = ops.gemm_f32(a, zp, 1.0, p, 1.0, isa=path)
    np.testing.assert_array_equal(got, acc.astype(np.float32))
    # Powers of two and a small-integer bias keep everything exact as well.
    bias = rng.integers(-1000, 1000, n).astype(np.float32)
    got = ops.gemm_f32(a, zp, 0.25, p, np.full(n, 2.0 ** -3, np.float32), bias, isa=path)
    np.testing.assert_array_equal(got, (acc / 32.0 + bias).astype(np.float32))


def test_f32_relu_is_max_with_zero(rng, ref, path):
    a, w, zp, a_scale, w_scale, bias, acc = _case(rng, ref, 13, 50, 70, True, "channel", "row")
    p = ops.pack_weight(w)
    plain = ops.gemm_f32(a, zp, a_scale, p, w_scale, bias, isa=path)
    relu = ops.gemm_f32(a, zp, a_scale, p, w_scale, bias, relu=True, isa=path)
    assert (plain < 0).any() and (plain > 0).any()  # the case exercises both sides
    assert np.array_equal(relu, np.where(plain > 0, plain, np.float32(0)))


def test_f32_int8_activations(rng, ref, path):
    for with_bias, relu in itertools.product([False, True], repeat=2):
        a, w, zp, a_scale, w_scale, bias, acc = _case(rng, ref, 7, 45, 37, with_bias,
                                                      "channel", "row", signed=True)
        got = ops.gemm_f32(a, zp, a_scale, ops.pack_weight(w), w_scale, bias, relu=relu,
                           isa=path)
        _assert_f32_close(got, ref.gemm_f32(acc, a_scale, w_scale, bias, relu))


def test_f32_large_k(rng, ref):
    k = ops.MAX_K
    a = ref.rand_u8(rng, (3, k), 0.7)
    w = ref.rand_s8(rng, (6, k), 0.7)
    w[0] = -128
    a[0] = 255
    zp = np.array([0, 255, 3], np.int32)
    a_scale = np.array([1e-3, 2e-2, 7e-3], np.float32)
    w_scale = rng.uniform(1e-3, 1e-2, 6).astype(np.float32)
    bias = rng.normal(0, 1, 6).astype(np.float32)
    acc = ref.gemm_s32(a, zp, w)
    assert abs(acc).max() > 2**30  # float(acc) rounds here
    p = ops.pack_weight(w)
    outs = [ops.gemm_f32(a, zp, a_scale, p, w_scale, bias, isa=path) for path in PATHS]
    _assert_f32_close(outs[0], ref.gemm_f32(acc, a_scale, w_scale, bias))
    for path, got in zip(PATHS, outs):
        ref.assert_bit_identical(got, outs[0], f"f32 large K {path}")


def test_f32_torch_in_torch_out(rng, ref):
    a, w, zp, a_scale, w_scale, bias, acc = _case(rng, ref, 4, 10, 6, True, "channel", "row")
    p = ops.pack_weight(w)
    t = ops.gemm_f32(torch.from_numpy(a), torch.from_numpy(zp), torch.from_numpy(a_scale), p,
                     torch.from_numpy(w_scale), torch.from_numpy(bias))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (4, 6)
    ref.assert_bit_identical(t.numpy(), ops.gemm_f32(a, zp, a_scale, p, w_scale, bias))


# -------------------------------------------------------------------------------- uint8


@pytest.mark.parametrize("with_bias,relu,w_kind,a_kind", COMBOS, ids=COMBO_IDS)
def test_u8_matches_reference_and_is_identical_across_paths(rng, ref, with_bias, relu,
                                                            w_kind, a_kind):
    for (m, k, n) in SHAPES:
        a, w, zp, a_scale, w_scale, bias, acc = _case(rng, ref, m, k, n, with_bias, w_kind,
                                                      a_kind)
        p = ops.pack_weight(w)
        y64 = ref.gemm_f32(acc, a_scale, w_scale, bias, relu)
        spread = float(np.abs(y64).max()) or 1.0
        for out_scale, out_zp in [(spread / 100, 128), (spread / 200, 0), (spread / 50, 255),
                                  (spread / 30, int(rng.integers(0, 256))), (spread * 1e-4, 77)]:
            outs = {path: ops.gemm_u8(a, zp, a_scale, p, w_scale, out_scale, out_zp, bias,
                                      relu=relu, isa=path) for path in PATHS}
            for path, got in outs.items():
                assert got.dtype == np.uint8 and got.shape == (m, n)
                ref.assert_u8_close(got, y64, out_scale, out_zp)
                ref.assert_bit_identical(got, outs["scalar"], f"u8 {path} vs scalar")


def test_u8_is_the_requantized_f32_result(rng, ref, path):
    """gemm_u8 == quantizing gemm_f32's output with the activation quantizer (out_scale,
    out_zero_point): exact. This is what lets a uint8 output feed the next layer."""
    for relu in (False, True):
        a, w, zp, a_scale, w_scale, bias, acc = _case(rng, ref, 21, 90, 67, True, "channel",
                                                      "row")
        p = ops.pack_weight(w)
        y = ops.gemm_f32(a, zp, a_scale, p, w_scale, bias, relu=relu, isa=path)
        out_scale = float(np.abs(y).max()) / 120
        for out_zp in (0, 100, 255):
            expected = np.empty(y.size, np.uint8)
            int8kit._C.quantize_u8(y.ravel(), out_scale, out_zp, expected)
            expected = expected.reshape(y.shape)
            got = ops.gemm_u8(a, zp, a_scale, p, w_scale, out_scale, out_zp, bias, relu=relu,
                              isa=path)
            np.testing.assert_array_equal(got, expected)


def test_u8_rounds_half_to_even(rng, ref, path):
    """With unit scales and out_scale 2, every odd accumulator is an exact tie."""
    m, k, n = 9, 4, 40
    a = rng.integers(120, 137, (m, k)).astype(np.uint8)
    w = rng.integers(-16, 17, (n, k)).astype(np.int8)
    p = ops.pack_weight(w)
    acc = ref.gemm_s32(a, 128, w)
    assert (acc % 2 == 1).sum() > 50  # plenty of ties
    got = ops.gemm_u8(a, 128, 1.0, p, 1.0, 2.0, 128, isa=path)
    np.testing.assert_array_equal(got, np.clip(np.rint(acc / 2) + 128, 0, 255))
    # With an odd zero point the order matters: torch's (and ours) adds it before rounding.
    got = ops.gemm_u8(a, 128, 1.0, p, 1.0, 2.0, 127, isa=path)
    np.testing.assert_array_equal(got, np.rint(np.clip(acc / 2 + 127, 0, 255)))
    # A bias of 0.5 makes every output a tie.
    got = ops.gemm_u8(a, 128, 1.0, p, 1.0, 1.0, 100, np.full(n, 0.5, np.float32), isa=path)
    np.testing.assert_array_equal(got, np.clip(np.rint(acc + 0.5) + 100, 0, 255))
    assert (np.rint(acc + 0.5) != np.floor(acc + 0.5) + 1).any()  # half-even != half-up


def test_u8_saturates(rng, ref, path):
    m, k, n = 5, 64, 33
    a = ref.rand_u8(rng, (m, k))
    w = ref.rand_s8(rng, (n, k))
    p = ops.pack_weight(w)
    acc = ref.gemm_s32(a, 128, w)
    got = ops.gemm_u8(a, 128, 1.0, p, 1.0, 1e-6, 128, isa=path)
    np.testing.assert_array_equal(got, np.where(acc > 0, 255, np.where(acc < 0, 0, 128)))
    # Extreme accumulators (|t| far beyond the int32 range before the clamp).
    a = np.full((2, ops.MAX_K), 255, np.uint8)
    w = np.stack([np.full(ops.MAX_K, -128, np.int8), np.full(ops.MAX_K, 127, np.int8)])
    got = ops.gemm_u8(a, 0, 1e3, ops.pack_weight(w), 1e3, 1e-3, 10, isa=path)
    np.testing.assert_array_equal(got, [[0, 255], [0, 255]])


def test_u8_relu_floors_at_zero_point(rng, ref, path):
    a, w, zp, a_scale, w_scale, bias, acc = _case(rng, ref, 10, 40, 50, True, "channel", "row")
    p = ops.pack_weight(w)
    y64 = ref.gemm_f32(acc, a_scale, w_scale, bias)
    out_scale = float(np.abs(y64).max()) / 60
    got = ops.gemm_u8(a, zp, a_scale, p, w_scale, out_scale, 90, bias, relu=True, isa=path)
    assert got.min() == 90 and got.max() > 90
    ref.assert_u8_close(got, np.maximum(y64, 0), out_scale, 90)


def test_u8_int8_activations_torch(rng, ref):
    a, w, zp, a_scale, w_scale, bias, acc = _case(rng, ref, 6, 31, 20, True, "channel", "row",
                                                  signed=True)
    p = ops.pack_weight(w)
    y64 = ref.gemm_f32(acc, a_scale, w_scale, bias)
    out_scale = float(np.abs(y64).max()) / 100
    got = ops.gemm_u8(torch.from_numpy(a), torch.from_numpy(zp), a_scale, p, w_scale,
                      out_scale, 128, torch.from_numpy(bias))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8
    ref.assert_u8_close(got.numpy(), y64, out_scale, 128)


def test_empty_m_epilogues(path):
    p = ops.pack_weight(np.ones((19, 3), np.int8))
    a = np.zeros((0, 3), np.uint8)
    f = ops.gemm_f32(a, 0, 1.0, p, np.ones(19, np.float32), np.zeros(19, np.float32),
                     relu=True, isa=path)
    u = ops.gemm_u8(a, 0, 1.0, p, 1.0, 0.5, 3, isa=path)
    assert f.shape == (0, 19) and f.dtype == np.float32
    assert u.shape == (0, 19) and u.dtype == np.uint8


# ---------------------------------------------------------------------- bad arguments


@pytest.fixture
def setup(rng, ref):
    m, k, n = 3, 8, 5
    a = ref.rand_u8(rng, (m, k))
    p = ops.pack_weight(ref.rand_s8(rng, (n, k)))
    return a, p, m, n


@pytest.mark.parametrize("kw, exc, name", [
    (dict(a_scale=np.ones(4, np.float32)), ValueError, "a_scale"),
    (dict(a_scale=np.ones(2, np.float32)), ValueError, "a_scale"),
    (dict(a_scale=np.ones((3, 1), np.float32)), ValueError, "a_scale"),
    (dict(a_scale=0.0), ValueError, "a_scale"),
    (dict(a_scale=-1.0), ValueError, "a_scale"),
    (dict(a_scale=np.array([1.0, 0.0, 1.0])), ValueError, "a_scale"),
    (dict(a_scale=np.array([1.0, np.nan, 1.0])), ValueError, "a_scale"),
    (dict(a_scale=np.array([np.inf])), ValueError, "a_scale"),
    # float32 arrays and tensors go to the kernel as they are; it checks their values
    (dict(a_scale=torch.tensor([1.0, -2.0, 1.0])), ValueError, "a_scale"),
    (dict(a_scale=torch.tensor([float("nan")])), ValueError, "a_scale"),
    (dict(a_scale=torch.ones(4)), ValueError, "a_scale"),
    (dict(w_scale=torch.tensor([1.0, 1.0, 1.0, 1.0, float("inf")])), ValueError, "w_scale"),
    (dict(w_scale=np.array([1, 1, 1, 1, 0], np.float32)), ValueError, "w_scale"),
    (dict(bias=torch.tensor([0.0, 0.0, float("-inf"), 0.0, 0.0])), ValueError, "bias"),
    (dict(w_scale=np.ones(6, np.float32)), ValueError, "w_scale"),
    (dict(w_scale=np.ones(3, np.float32)), ValueError, "w_scale"),
    (dict(w_scale=np.ones((5, 1), np.float32)), ValueError, "w_scale"),
    (dict(w_scale=0.0), ValueError, "w_scale"),
    (dict(w_scale=np.array([1, 1, -1, 1, 1], np.float32)), ValueError, "w_scale"),
    (dict(w_scale=np.array([1, 1, np.nan, 1, 1], np.float32)), ValueError, "w_scale"),
    (dict(bias=np.zeros(4, np.float32)), ValueError, "bias"),
    (dict(bias=np.zeros(6, np.float32)), ValueError, "bias"),
    (dict(bias=np.zeros(1, np.float32)), ValueError, "bias"),
    (dict(bias=np.zeros((1, 5), np.float32)), ValueError, "bias"),
    (dict(bias=np.zeros(5, np.float64)), TypeError, "bias"),
    (dict(bias=torch.zeros(5, dtype=torch.float16)), TypeError, "bias"),
    (dict(bias=[0.0] * 5), TypeError, "bias"),
    (dict(bias=np.zeros(10, np.float32)[::2]), ValueError, "bias"),
])
def test_bad_epilogue_arguments(setup, kw, exc, name):
    a, p, m, n = setup
    args = dict(a_scale=0.5, w_scale=np.ones(n, np.float32), bias=None)
    args.update(kw)
    for call in (
        lambda: ops.gemm_f32(a, 0, args["a_scale"], p, args["w_scale"], args["bias"]),
        lambda: ops.gemm_u8(a, 0, args["a_scale"], p, args["w_scale"], 0.1, 0, args["bias"]),
    ):
        with pytest.raises(exc, match=name):
            call()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("out_scale, out_zp, name", [
    (0.0, 0, "out_scale"), (-1.0, 0, "out_scale"), (float("nan"), 0, "out_scale"),
    (float("inf"), 0, "out_scale"), (1.0, -1, "out_zero_point"), (1.0, 256, "out_zero_point"),
    (1e-42, 0, "scale"),  # finite and > 0, but 1 / out_scale overflows float32
])
def test_bad_requant_arguments(setup, out_scale, out_zp, name):
    a, p, m, n = setup
    with pytest.raises(ValueError, match=name):
        ops.gemm_u8(a, 0, 0.5, p, 1.0, out_scale, out_zp)


@pytest.mark.parametrize("kw", [dict(a_scale=float("nan")), dict(a_scale=float("inf")),
                                dict(w_scale=float("nan")), dict(w_scale=float("inf"))])
def test_non_finite_scalar_scales_are_rejected(setup, kw):
    a, p, m, n = setup
    args = dict(a_scale=0.5, w_scale=1.0)
    args.update(kw)
    with pytest.raises(ValueError, match=next(iter(kw))):
        ops.gemm_f32(a, 0, args["a_scale"], p, args["w_scale"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_scale_overflowing_float32_is_rejected(setup):
    a, p, m, n = setup
    with pytest.raises(ValueError, match="a_scale"):
        ops.gemm_f32(a, 0, np.array([1e39]), p, 1.0)


@pytest.mark.parametrize("out_zp", [3.5, np.float32(7.9)])
def test_fractional_out_zero_point_is_rejected(setup, out_zp):
    a, p, m, n = setup
    with pytest.raises((TypeError, ValueError), match="out_zero_point"):
        ops.gemm_u8(a, 0, 0.5, p, 1.0, 1.0, out_zp)


def test_tiny_out_scale_and_nan_bias_are_rejected_with_clear_messages(setup):
    a, p, m, n = setup
    with pytest.raises(ValueError, match="too small"):
        ops.gemm_u8(a, 0, 0.5, p, 1.0, 1e-42, 0)
    bias = np.zeros(n, np.float32)
    bias[-1] = np.nan
    with pytest.raises(ValueError, match="bias must be finite"):
        ops.gemm_f32(a, 0, 0.5, p, 1.0, bias)


_FMAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("where", [0, 1, 500, 1016, 1022])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -_FMAX])
def test_value_scans_find_a_bad_value_anywhere(rng, ref, where, bad):
    """The kernels' scale and bias checks are vectorized scans: a bad value in any lane or
    in the tail is found and its index named; the extremes of valid values pass."""
    n = 1023  # not a multiple of any vector width
    a = ref.rand_u8(rng, (2, 8))
    p = ops.pack_weight(ref.rand_s8(rng, (n, 8)))
    w_scale = np.full(n, 0.5, np.float32)
    w_scale[[3, 7]] = _FMAX, np.float32(1e-45)  # finite and > 0 (1e-45: a denormal)
    bias = np.zeros(n, np.float32)
    bias[[2, 9]] = _FMAX, -_FMAX
    ops.gemm_f32(a, 0, 1e-30, p, w_scale, bias)  # all valid
    bad_scale = w_scale.copy()
    bad_scale[where] = bad
    with pytest.raises(ValueError, match=f"w_scale must be finite and > 0.*index {where}"):
        ops.gemm_f32(a, 0, 1.0, p, bad_scale, bias)
    bad_bias = bias.copy()
    bad_bias[where] = bad
    if np.isfinite(bad):
        ops.gemm_f32(a, 0, 1.0, p, w_scale, bad_bias)
    else:
        with pytest.raises(ValueError, match=f"bias must be finite.*index {where}"):
            ops.gemm_f32(a, 0, 1.0, p, w_scale, bad_bias)


def test_outputs_start_on_a_cache_line(setup):
    # numpy aligns to 16 bytes; rows two threads write side by side then share cache lines
    a, p, m, n = setup
    for out in (ops.gemm_s32(a, 0, p), ops.gemm_f32(a, 0, 0.5, p, 1.0),
                ops.gemm_u8(a, 0, 0.5, p, 1.0, 0.1, 3), ops.gemm_s32(torch.from_numpy(a), 0, p)):
        data = out.data_ptr() if isinstance(out, torch.Tensor) else out.ctypes.data
        assert data % 64 == 0
        assert out.flags.c_contiguous if isinstance(out, np.ndarray) else out.is_contiguous()
