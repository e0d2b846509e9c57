"""Dynamic uint8 activation quantization (quantize.h): parameters as torch.ao's MinMax
observers for quint8, q = clamp(rint(fma(x, 1/scale, zp)), 0, 255) as torch, identical on every path.

quantize_dynamic_u8 has no per-call `isa=`: paths are forced for a block with ops.use_isa.
"""

import warnings

import numpy as np
import pytest
import torch

import int8kit
from int8kit import ops

PATHS = int8kit.cpu_info()["supported_paths"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::UserWarning")


def quantize_on(path, x, per_row, threads=None):
    with ops.use_isa(path):
        assert ops.get_isa() == path
        return ops.quantize_dynamic_u8(x, per_row=per_row, threads=threads)


def assert_matches_reference(ref, x, per_row, got):
    q, scale, zp = got
    eq, es, ez = ref.quantize_dynamic_u8(x, per_row)
    assert q.dtype == np.uint8 and scale.dtype == np.float32 and zp.dtype == np.int32
    assert q.shape == x.shape and scale.shape == es.shape and zp.shape == ez.shape
    np.testing.assert_array_equal(scale, es)
    np.testing.assert_array_equal(zp, ez)
    np.testing.assert_array_equal(q, eq)


def distributions(rng, m, k):
    yield "normal", rng.normal(0, 1, (m, k))
    yield "positive", rng.uniform(0.5, 3, (m, k))
    yield "negative", -rng.uniform(0.5, 3, (m, k))
    yield "zeros", np.zeros((m, k))
    yield "constant", np.full((m, k), 0.7)
    yield "tiny", rng.normal(0, 1e-30, (m, k))
    yield "large", rng.normal(0, 1e30, (m, k))
    yield "mixed-rows", rng.normal(0, 1, (m, k)) * np.logspace(-3, 3, m)[:, None]
    yield "grid", np.round(rng.normal(0, 20, (m, k))) / 8  # many exact ties after scaling


# --------------------------------------------------------------------------- reference


def test_reference_qparams_by_hand(ref):
    s, z = ref.choose_qparams_u8(-1.0, 3.0)
    assert s == np.float32(4.0) / np.float32(255) and z == 64  # rint(255/4) = 64
    s, z = ref.choose_qparams_u8(2.0, 5.0)  # range widened to include 0
    assert s == np.float32(5.0) / np.float32(255) and z == 0
    s, z = ref.choose_qparams_u8(-5.0, -2.0)
    assert z == 255
    s, z = ref.choose_qparams_u8(0.0, 0.0)  # zero range guarded
    assert s == np.finfo(np.float32).eps and z == 0


@pytest.mark.parametrize("per_row", [True, False], ids=["per_row", "per_tensor"])
def test_matches_reference(rng, ref, path, per_row):
    for m, k in [(1, 1), (1, 17), (3, 64), (7, 100), (16, 33), (5, 513)]:
        for name, x in distributions(rng, m, k):
            x = x.astype(np.float32)
            assert_matches_reference(ref, x, per_row, quantize_on(path, x, per_row))


@pytest.mark.parametrize("per_row", [True, False], ids=["per_row", "per_tensor"])
def test_every_length_1_to_200_on_every_path(rng, ref, per_row):
    """Lengths 1..200 cover every vector tail (AVX2 8 / AVX-512 16 / unrolled 64 lanes)."""
    for k in range(1, 201):
        x = rng.normal(0, 1, (3, k)).astype(np.float32)
        x[1] *= 10
        # Put the row extremes at the end too, so a scan that drops the tail is caught.
        x[2, -1] = 50.0
        x[0, -1] = -50.0 if k > 1 else x[0, -1]
        outs = [quantize_on(path, x, per_row) for path in PATHS]
        assert_matches_reference(ref, x, per_row, outs[0])
        for path, out in zip(PATHS, outs):
            for got, want in zip(out, outs[0]):
                ref.assert_bit_identical(got, want, f"quantize k={k} {path}")


def test_dequantization_error_is_within_half_a_step(rng, path):
    x = rng.normal(0, 2, (9, 301)).astype(np.float32)
    for per_row in (True, False):
        q, scale, zp = quantize_on(path, x, per_row)
        s = scale.reshape(-1, 1).astype(np.float64)
        xhat = s * (q.astype(np.float64) - zp.reshape(-1, 1))
        assert np.all(np.abs(xhat - x) <= s * 0.5 * (1 + 1e-5))
        # The range is used: the row (tensor) extremes hit 0 or 255.
        if per_row:
            assert (q.min(axis=1) == 0).all() and (q.max(axis=1) == 255).all()
        else:
            assert q.min() == 0 and q.max() == 255


# ------------------------------------------------------------------------------ torch.ao


def _torch_observer_qparams(x, per_row):
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if per_row:
            obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8,
                                           qscheme=torch.per_channel_affine)
        else:
            obs = MinMaxObserver(dtype=torch.quint8)
        obs(x)
        scale, zp = obs.calculate_qparams()
    return scale.to(torch.float32), zp.to(torch.int32)


def _near_tie(x, scale, tol=1e-3):
    t = np.asarray(x, np.float64) * np.float64(np.float32(1) / np.float32(scale))
    return np.abs(np.abs(t - np.floor(t)) - 0.5) < tol


def test_per_tensor_qparams_match_torch_minmax_observer(rng, path):
    for m, k in [(1, 1), (4, 10), (8, 257), (33, 64)]:
        for name, x in distributions(rng, m, k):
            xt = torch.from_numpy(x.astype(np.float32))
            q, scale, zp = quantize_on(path, xt, per_row=False)
            assert isinstance(q, torch.Tensor)
            t_scale, t_zp = _torch_observer_qparams(xt, per_row=False)
            assert scale.item() == t_scale.item(), (name, scale, t_scale)
            assert zp.item() == t_zp.item(), (name, zp, t_zp)


def test_per_row_qparams_match_torch_per_channel_observer(rng, path):
    for m, k in [(1, 3), (6, 40), (17, 100)]:
        for name, x in distributions(rng, m, k):
            xt = torch.from_numpy(x.astype(np.float32))
            q, scale, zp = quantize_on(path, xt, per_row=True)
            t_scale, t_zp = _torch_observer_qparams(xt, per_row=True)
            assert torch.equal(scale, t_scale), name
            assert torch.equal(zp, t_zp), name


def _torch_q(xt, scale, zp, per_row):
    if per_row:
        return torch.quantize_per_channel(xt, scale.double(), zp.long(), 0,
                                          torch.quint8).int_repr()
    return torch.quantize_per_tensor(xt, scale.item(), zp.item(), torch.quint8).int_repr()


@pytest.mark.parametrize("per_row", [False, True], ids=["per_tensor", "per_row"])
def test_q_agrees_with_torch_quantize_away_from_ties(rng, path, per_row):
    """Equal to torch.quantize_per_tensor / per_channel wherever x / scale is not within
    1e-3 of a .5 tie; at most one step apart at ties (per-channel torch divides by s instead)."""
    for m, k in [(1, 1), (4, 10), (8, 257), (33, 64)]:
        for name, x in distributions(rng, m, k):
            xt = torch.from_numpy(x.astype(np.float32))
            q, scale, zp = quantize_on(path, xt, per_row=per_row)
            diff = (q.numpy().astype(np.int64) - _torch_q(xt, scale, zp, per_row).numpy())
            tie = _near_tie(x, scale.numpy().reshape(-1, 1))
            assert np.all(np.abs(diff) <= 1), name
            assert np.all(diff[~tie] == 0), name


@pytest.mark.parametrize("per_row", [False, True], ids=["per_tensor", "per_row"])
def test_q_equals_torch_quantize_value_for_value(rng, per_row):
    """Equal to torch's quantize with our own parameters, except near .5 ties with an odd
    zero point: there torch's answer depends on its version and CPU (2.13 on this
    machine adds the zero point before rounding, as we do; 2.11 on an AMX Xeon rounded
    first), so near ties are held to our order (float32 fma, then rint) instead."""
    cases = [np.array([[-1.0, -0.5, 2.0]], np.float32)]  # -0.5 / s = -42.5 exactly, z = 85
    cases += [(rng.integers(0, 256, (8, 100)) / 255.0 - 0.3).astype(np.float32)]  # image-like
    cases += [x.astype(np.float32) for _, x in distributions(rng, 8, 257)]
    for x in cases:
        xt = torch.from_numpy(x)
        q, scale, zp = ops.quantize_dynamic_u8(xt, per_row=per_row)
        if per_row:
            # Per row is per tensor on each row. (torch.quantize_per_channel rounds
            # x / s + zp, a division, so it may differ at ties: see the test above.)
            expected = torch.stack([
                torch.quantize_per_tensor(xt[i], scale[i].item(), zp[i].item(),
                                          torch.quint8).int_repr()
                for i in range(xt.shape[0])])
        else:
            expected = _torch_q(xt, scale, zp, per_row)
        s = scale.numpy().reshape(-1, 1)
        t = x.astype(np.float64) * (np.float32(1) / s).astype(np.float64)  # exact product
        ours = np.rint(np.clip((t + zp.numpy().reshape(-1, 1)).astype(np.float32), 0, 255))
        near = _near_tie(x, s)
        got, theirs = q.numpy(), expected.numpy()
        np.testing.assert_array_equal(got[near], ours[near])
        np.testing.assert_array_equal(got[~near], theirs[~near])
        assert np.all(np.abs(got[near].astype(int) - theirs[near]) <= 1)
    q, _, _ = ops.quantize_dynamic_u8(torch.from_numpy(cases[0]), per_row=per_row)
    assert q[0, 1] == 42  # round(-42.5 + 85), not round(-42.5) + 85


# ---------------------------------------------------------------------- NaN, Inf, edges


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values_raise_at_every_position(path, bad):
    for k in (1, 2, 7, 8, 9, 15, 16, 17, 33, 63, 64, 65, 100):
        base = np.linspace(-1, 1, 2 * k, dtype=np.float32).reshape(2, k)
        for row in range(2):
            for col in range(k):
                x = base.copy()
                x[row, col] = bad
                for per_row in (True, False):
                    with pytest.raises(ValueError, match="NaN or Inf"):
                        quantize_on(path, x, per_row)


def test_non_finite_in_a_late_row_with_threads(rng, path):
    x = rng.normal(0, 1, (64, 4096)).astype(np.float32)
    x[-1, -1] = np.nan
    for per_row in (True, False):
        for threads in (1, 2, 4):
            with pytest.raises(ValueError, match="NaN or Inf"):
                quantize_on(path, x, per_row, threads)


def test_fixed_parameters_clamp_nan_huge_and_ties_as_the_scalar_path(rng, path):
    # Static quantization has fixed parameters, so values far outside [0, 255] after scaling
    # (and NaN, when the caller skips the check) reach the quantize loop: every path must
    # clamp them exactly as the scalar one (NaN and anything below -0.5 -> 0, above -> 255).
    from int8kit import _C
    for n in (1, 15, 16, 17, 63, 64, 65, 130, 1000):
        x = (rng.standard_normal(n) * rng.choice([1, 1e3, 1e12, 1e38], n)).astype(np.float32)
        x[rng.integers(0, n, max(1, n // 10))] = np.nan
        x[rng.integers(0, n, max(1, n // 20))] = -0.004  # rounds to -0 at scale 0.01
        for scale, zp in ((0.01, 0), (0.1, 128), (3.0, 255), (1e-30, 7)):
            got, want = np.empty(n, np.uint8), np.empty(n, np.uint8)
            with ops.use_isa(path):
                _C.quantize_u8(x, scale, zp, got, False)
            with ops.use_isa("scalar"):
                _C.quantize_u8(x, scale, zp, want, False)
            np.testing.assert_array_equal(got, want, err_msg=f"n={n} scale={scale} zp={zp}")


def test_largest_finite_values_are_accepted(path):
    # The range, widened to include 0, must fit a float32: [-big, 0] and [0, big] do.
    big = np.finfo(np.float32).max
    x = np.array([[big, 0.0, 1.0, 0.5], [-big, -1.0, 0.0, 0.5]], np.float32)
    q, scale, _ = quantize_on(path, x, per_row=True)
    assert np.isfinite(scale).all() and q[:, 0].tolist() == [255, 0]
    q, scale, _ = quantize_on(path, x[:1], per_row=False)  # per tensor: one row's range
    assert np.isfinite(scale).all() and q[0, 0] == 255


@pytest.mark.parametrize("per_row", [True, False])
def test_range_too_wide_for_a_float32_scale_raises(per_row):
    # Finite but 4e38 apart: hi - lo overflows float32; the scale was inf and q all zero.
    x = np.array([[0.5, 1.0, 2.0, 3.0], [2e38, -2e38, 0.5, 1.0]], np.float32)
    with pytest.raises(ValueError, match=r"x: .*range .*too wide for a float32 scale"):
        ops.quantize_dynamic_u8(x, per_row=per_row)


def test_empty_rows(path):
    x = np.zeros((0, 5), np.float32)
    q, scale, zp = quantize_on(path, x, per_row=True)
    assert q.shape == (0, 5) and scale.shape == (0,) and zp.shape == (0,)
    q, scale, zp = quantize_on(path, x, per_row=False)
    assert q.shape == (0, 5) and scale.shape == (1,) and zp.shape == (1,)
    assert scale[0] > 0 and 0 <= zp[0] <= 255


def test_torch_in_torch_out(rng, ref):
    x = rng.normal(0, 1, (4, 19)).astype(np.float32)
    q, scale, zp = ops.quantize_dynamic_u8(torch.from_numpy(x))
    assert isinstance(q, torch.Tensor) and q.dtype == torch.uint8
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert_matches_reference(ref, x, True, (q.numpy(), scale.numpy(), zp.numpy()))
    # A tensor that requires grad has no direct numpy view: it is read detached.
    q2, _, _ = ops.quantize_dynamic_u8(torch.from_numpy(x).requires_grad_())
    assert torch.equal(q2, q)


def test_input_is_not_modified(rng):
    x = rng.normal(0, 1, (4, 19)).astype(np.float32)
    x0 = x.copy()
    ops.quantize_dynamic_u8(x)
    ops.quantize_dynamic_u8(x, per_row=False)
    assert np.array_equal(x, x0)


def test_feeds_gemm(rng, ref, path):
    """The quantized activations and their parameters plug into gemm_f32 directly."""
    x = rng.normal(0, 1, (5, 40)).astype(np.float32)
    w = ref.rand_s8(rng, (12, 40))
    w_scale = rng.uniform(1e-3, 1e-2, 12).astype(np.float32)
    q, scale, zp = quantize_on(path, x, per_row=True)
    got = ops.gemm_f32(q, zp, scale, ops.pack_weight(w), w_scale, isa=path)
    expected = ref.gemm_f32(ref.gemm_s32(q, zp, w), scale, w_scale)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-30)
    # And the result approximates the float product within the activation step.
    exact = x.astype(np.float64) @ (w.astype(np.float64) * w_scale[:, None]).T
    bound = 0.5 * scale[:, None] * (np.abs(w).astype(np.float64) * w_scale[:, None]).sum(1)
    assert np.all(np.abs(got - exact) <= bound * (1 + 1e-4) + 1e-6)


@pytest.mark.parametrize("x, exc, words", [
    (np.zeros((2, 3), np.float64), TypeError, ["x", "float32"]),
    (np.zeros((2, 3), np.float16), TypeError, ["x"]),
    (torch.zeros((2, 3), dtype=torch.bfloat16), TypeError, ["x"]),
    (torch.zeros((2, 3), dtype=torch.int32), TypeError, ["x"]),
    ([[1.0, 2.0]], TypeError, ["x"]),
    (np.zeros(3, np.float32), ValueError, ["x", "2-D"]),
    (np.zeros((2, 3, 4), np.float32), ValueError, ["x", "2-D"]),
    (np.zeros((4, 6), np.float32)[:, ::2], ValueError, ["x", "contiguous"]),
    (torch.zeros((3, 2)).t(), ValueError, ["x", "contiguous"]),
    (np.zeros((2, 0), np.float32), ValueError, ["x", "column"]),
])
def test_bad_inputs(x, exc, words):
    for per_row in (True, False):
        with pytest.raises(exc) as info:
            ops.quantize_dynamic_u8(x, per_row=per_row)
        for word in words:
            assert word in str(info.value)


@pytest.mark.parametrize("threads", [0, -2, 2.0, False])
def test_bad_threads(threads):
    with pytest.raises(ValueError, match="threads"):
        ops.quantize_dynamic_u8(np.ones((2, 2), np.float32), threads=threads)
