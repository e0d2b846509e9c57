"""choose_qparams / quantize / dequantize against torch.ao's observers and fake-quantize ops."""

import warnings

import numpy as np
import pytest
import torch

import int8kit
from int8kit.qparams import qparams_from_range, qrange

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated and says so
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

# torch's quantized-tensor functions warn that they are deprecated; they are the reference.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated")

SCHEMES = [  # (torch dtype, torch qscheme) -> our (symmetric, signed)
    (torch.quint8, torch.per_tensor_affine, False, False),
    (torch.qint8, torch.per_tensor_affine, False, True),
    (torch.qint8, torch.per_tensor_symmetric, True, True),
    (torch.quint8, torch.per_tensor_symmetric, True, False),
]


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "normal": torch.randn(257, generator=g) * 3,
        "positive": torch.rand(64, generator=g) + 2.0,      # range widened down to 0
        "negative": -torch.rand(64, generator=g) - 0.5,     # range widened up to 0
        "skewed": torch.randn(100, generator=g).exp(),
        "zeros": torch.zeros(10),                           # zero range: scale = eps
        "constant": torch.full((5,), 0.75),
        "tiny": torch.randn(50, generator=g) * 1e-9,        # scale clamps to eps
    }


@pytest.mark.parametrize("dtype,qscheme,symmetric,signed", SCHEMES)
@pytest.mark.parametrize("kind", list(_tensors()))
def test_per_tensor_matches_minmax_observer(dtype, qscheme, symmetric, signed, kind):
    x = _tensors()[kind]
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme)
    obs(x)
    ref_scale, ref_zp = obs.calculate_qparams()
    scale, zp = int8kit.choose_qparams(x, symmetric=symmetric, signed=signed)
    assert scale.shape == () and scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert torch.equal(scale.reshape(1), ref_scale)  # bit for bit
    assert torch.equal(zp.reshape(1).long(), ref_zp.long())


@pytest.mark.parametrize("dtype,qscheme,symmetric,signed", [
    (torch.qint8, torch.per_channel_symmetric, True, True),
    (torch.quint8, torch.per_channel_affine, False, False),
    (torch.qint8, torch.per_channel_affine, False, True),
    (torch.quint8, torch.per_channel_symmetric, True, False),
])
@pytest.mark.parametrize("axis", [0, 1, 3, -1])
def test_per_channel_matches_observer(dtype, qscheme, symmetric, signed, axis):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 5, 3, 4, generator=g) * torch.linspace(0.01, 4, 4)
    w[..., 0] = 0.0  # a slice that is all zero along the last axis
    obs = PerChannelMinMaxObserver(ch_axis=axis % 4, dtype=dtype, qscheme=qscheme)
    obs(w)
    ref_scale, ref_zp = obs.calculate_qparams()
    scale, zp = int8kit.choose_qparams(w, symmetric=symmetric, signed=signed, axis=axis)
    assert scale.shape == (w.shape[axis],)
    assert torch.equal(scale, ref_scale)
    assert torch.equal(zp.long(), ref_zp.long())


@pytest.mark.parametrize("bits", range(2, 8))
@pytest.mark.parametrize("symmetric,signed", [(False, False), (False, True), (True, True)])
def test_low_bits_match_observer_with_custom_range(bits, symmetric, signed):
    x = torch.randn(300, generator=torch.Generator().manual_seed(bits)) * 2 + 0.3
    qmin, qmax = qrange(bits, signed)
    dtype = torch.qint8 if signed else torch.quint8
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)
    obs(x)
    ref_scale, ref_zp = obs.calculate_qparams()
    scale, zp = int8kit.choose_qparams(x, bits=bits, symmetric=symmetric, signed=signed)
    assert torch.equal(scale.reshape(1), ref_scale)
    assert int(zp) == int(ref_zp)
    q = int8kit.quantize(x, scale, zp, bits=bits, signed=signed)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    assert int(q.min()) == qmin or int(q.max()) == qmax  # the range is actually used


def test_unsigned_symmetric_zero_point_is_midpoint():
    # torch uses 128 for 8 bits; for fewer bits int8kit keeps 2^(bits-1) (torch's custom
    # range would give (qmin + qmax) // 2 = 2^(bits-1) - 1, an asymmetric grid).
    for bits in range(2, 9):
        _, zp = int8kit.choose_qparams(torch.randn(10), bits=bits, symmetric=True)
        assert int(zp) == 1 << (bits - 1)


def test_qrange():
    assert qrange(8, False) == (0, 255) and qrange(8, True) == (-128, 127)
    assert qrange(2, True) == (-2, 1) and qrange(4, False) == (0, 15)


def test_quantize_matches_torch_fake_quantize_value_for_value():
    # Exact ties (x / scale = k + 0.5) included: round half to even before adding zp.
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    scale, zp = int8kit.choose_qparams(x)
    assert int(zp) % 2 == 1  # an odd zero point is where tie handling shows
    xt = torch.cat([x, (torch.arange(-300, 300) + 0.5) * scale, torch.tensor([1e30, -1e30])])
    q = int8kit.quantize(xt, scale, zp)
    assert q.dtype == torch.uint8
    ref = torch.fake_quantize_per_tensor_affine(xt, float(scale), int(zp), 0, 255)
    assert torch.equal(int8kit.dequantize(q, scale, zp), ref)


def test_quantize_matches_quantize_per_tensor_off_ties():
    # torch.quantize_per_tensor (fbgemm) rounds x/scale + zp in one step, which differs
    # from round(x/scale) + zp only at exact ties with an odd zp; random data has none.
    x = torch.randn(5000, generator=torch.Generator().manual_seed(3)) * 3
    for symmetric, signed, dtype in [(False, False, torch.quint8), (False, True, torch.qint8),
                                     (True, True, torch.qint8)]:
        scale, zp = int8kit.choose_qparams(x, symmetric=symmetric, signed=signed)
        ref = torch.quantize_per_tensor(x, float(scale), int(zp), dtype)
        q = int8kit.quantize(x, scale, zp, signed=signed)
        assert torch.equal(q, ref.int_repr())
        assert torch.equal(int8kit.dequantize(q, scale, zp), ref.dequantize())


def test_per_channel_quantize_matches_torch():
    w = torch.randn(8, 20, generator=torch.Generator().manual_seed(4)) * 2
    w[:, :5] = torch.arange(5) + 0.5  # ties
    scale, zp = int8kit.choose_qparams(w, symmetric=True, signed=True, axis=0)
    q = int8kit.quantize(w, scale, zp, signed=True, axis=0)
    ref = torch.quantize_per_channel(w, scale, zp.long(), 0, torch.qint8)
    assert torch.equal(q, ref.int_repr())
    for axis in (0, 1):
        scale, zp = int8kit.choose_qparams(w, axis=axis)
        q = int8kit.quantize(w, scale, zp, axis=axis)
        ref = torch.fake_quantize_per_channel_affine(w, scale, zp, axis, 0, 255)
        assert torch.equal(int8kit.dequantize(q, scale, zp, axis=axis), ref)


def test_round_half_to_even_and_clamp():
    q = int8kit.quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0]), 1.0, 0,
                         signed=True)
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]
    q4 = int8kit.quantize(torch.tensor([100.0, -100.0]), 1.0, 0, bits=4, signed=True)
    assert q4.tolist() == [7, -8]


def test_roundtrip_error_within_half_step_and_zero_exact():
    x = torch.cat([torch.rand(500, generator=torch.Generator().manual_seed(5)) * 6 + 1,
                   torch.zeros(3)])
    for kw in [dict(), dict(symmetric=True, signed=True), dict(bits=4)]:
        scale, zp = int8kit.choose_qparams(x, **kw)
        xh = int8kit.dequantize(int8kit.quantize(x, scale, zp, bits=kw.get("bits", 8),
                                                  signed=kw.get("signed", False)), scale, zp)
        assert (xh - x).abs().max() <= float(scale) / 2 * (1 + 1e-5)
        assert torch.all(xh[-3:] == 0)  # 0 is exactly representable


def test_zero_range_tensor_gets_eps_scale():
    scale, zp = int8kit.choose_qparams(torch.zeros(4, 3))
    assert float(scale) == torch.finfo(torch.float32).eps and int(zp) == 0
    q = int8kit.quantize(torch.zeros(4, 3), scale, zp)
    assert torch.all(int8kit.dequantize(q, scale, zp) == 0)


def test_bf16_and_half_inputs_are_measured_in_float32():
    x = torch.randn(100, generator=torch.Generator().manual_seed(6))
    for dt in (torch.bfloat16, torch.float16):
        xd = x.to(dt)
        scale = int8kit.choose_qparams(xd).scale
        assert torch.equal(scale, int8kit.choose_qparams(xd.float()).scale)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("axis", [None, 1])
def test_nan_or_inf_is_a_clear_error(bad, axis):
    x = torch.randn(4, 5)
    x[2, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        int8kit.choose_qparams(x, axis=axis)


def test_bad_arguments_name_themselves():
    x = torch.randn(4, 5)
    for bits in (1, 9, 8.0, True):
        with pytest.raises(ValueError, match="bits"):
            int8kit.choose_qparams(x, bits=bits)
    with pytest.raises(ValueError, match="axis"):
        int8kit.choose_qparams(x, axis=2)
    with pytest.raises(TypeError, match="x must be a floating"):
        int8kit.choose_qparams(torch.ones(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        int8kit.choose_qparams([1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        int8kit.choose_qparams(torch.empty(0, 3))
    with pytest.raises(ValueError, match="scale"):
        int8kit.quantize(x, 0.0, 0)
    with pytest.raises(ValueError, match="scale"):
        int8kit.quantize(x, float("nan"), 0)
    with pytest.raises(ValueError, match="zero_point"):
        int8kit.quantize(x, 0.1, 200, signed=True)
    with pytest.raises(TypeError, match="zero_point"):
        int8kit.quantize(x, 0.1, 0.5)
    with pytest.raises(ValueError, match="per-channel"):
        int8kit.quantize(x, torch.ones(3), torch.zeros(3, dtype=torch.int32), axis=1)
    with pytest.raises(ValueError, match="per-tensor"):
        int8kit.quantize(x, torch.ones(4), torch.zeros(4, dtype=torch.int32))
    with pytest.raises(TypeError, match="q must be an integer"):
        int8kit.dequantize(x, 0.1, 0)
    with pytest.raises(ValueError, match="lo must be <= hi"):
        qparams_from_range(torch.tensor(1.0), torch.tensor(0.0))


def test_activation_kernel_uses_the_same_formula():
    # The C++ per-row activation quantizer and qparams agree value for value.
    x = torch.randn(6, 77, generator=torch.Generator().manual_seed(7)) * 4
    x[2] = x[2].abs() + 1  # an all-positive row
    q, scale, zp = int8kit.ops.quantize_dynamic_u8(x, per_row=True)
    for m in range(6):
        s, z = int8kit.choose_qparams(x[m])
        assert float(scale[m]) == float(s) and int(zp[m]) == int(z)
        assert torch.equal(q[m], int8kit.quantize(x[m], s, z))


# ------------------------------------------------- ranges, NaN and parameters (review fixes)


def test_range_too_wide_for_a_float32_scale_names_the_argument():
    # Finite values 4e38 apart: hi - lo overflows float32, and an inf scale would quantize
    # everything to the zero point.
    x = torch.tensor([[2e38, -2e38, 0.5, 1.0]])
    with pytest.raises(ValueError, match=r"x: its range \[-2e\+38, 2e\+38\] is too wide "
                                         r"for a float32 scale"):
        int8kit.choose_qparams(x)
    with pytest.raises(ValueError, match=r"x \(channel 1 along axis 0\): its range"):
        int8kit.choose_qparams(torch.cat([torch.ones(1, 4), x]), axis=0)
    with pytest.raises(ValueError, match="lo and hi: its range .* too wide"):
        qparams_from_range(-2e38, 2e38)
    with pytest.raises(ValueError, match="too wide"):  # 2-D ranges, as HistogramObserver's
        qparams_from_range(torch.tensor([[0.0, -2e38]]), torch.tensor([[1.0, 2e38]]))
    # What a float32 scale can span is accepted, and symmetric halves the width.
    big = torch.finfo(torch.float32).max
    for lo, hi in ((-big, 0.0), (0.0, big), (-big / 2, big / 2)):
        assert torch.isfinite(qparams_from_range(lo, hi).scale)
    assert torch.isfinite(int8kit.choose_qparams(x, symmetric=True, signed=True).scale)


def test_quantize_refuses_nan_and_saturates_inf():
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    with pytest.raises(ValueError, match="x contains NaN"):
        int8kit.quantize(x, 0.1, 128)
    with pytest.raises(ValueError, match="x contains NaN"):
        int8kit.quantize(x[:2].reshape(1, 2), torch.ones(2), torch.zeros(2, dtype=torch.int32),
                         axis=1)
    assert int8kit.quantize(x[[0, 2, 3]], 0.1, 128).tolist() == [138, 255, 0]
    assert int8kit.quantize(x[[2, 3]], 0.1, 0, signed=True).tolist() == [127, -128]


_BAD_PARAMS = [  # (scale, zero_point, exception, what the message must say)
    ("a", 0, TypeError, r"scale must be a real number .*got str"),
    (None, 0, TypeError, r"scale must be a real number .*got NoneType"),
    (True, 0, TypeError, r"scale must be a real number .*got bool"),
    (1 + 2j, 0, TypeError, r"scale must be a real number .*got complex"),
    (-1.0, 0, ValueError, r"scale must be finite and in \(0, 3\.40282e\+38\] .*got -1\.0"),
    (1e39, 0, ValueError, r"scale must be finite and in \(0, .*got 1e\+39"),
    (float("nan"), 0, ValueError, r"scale must be finite .*got nan"),
    (0.1, None, TypeError, r"zero_point must be an integer .*got NoneType"),
    (0.1, "3", TypeError, r"zero_point must be an integer .*got str"),
    (0.1, 3.5, TypeError, r"zero_point must be an integer .*got float"),
    (0.1, True, TypeError, r"zero_point must be an integer .*got bool"),
    (0.1, [[1, 2], [3]], TypeError, r"zero_point must be an integer .*got list"),
    (0.1, 10**20, ValueError, r"zero_point must be in \[.*got 100000000000000000000"),
    (0.1, torch.tensor(2**40), ValueError, r"zero_point must be in \[.*got 1099511627776"),
]


@pytest.mark.parametrize("scale,zero_point,exc,match", _BAD_PARAMS)
def test_bad_scale_or_zero_point_names_it_with_the_valid_range(scale, zero_point, exc, match):
    with pytest.raises(exc, match=match):
        int8kit.quantize(torch.ones(3), scale, zero_point)
    with pytest.raises(exc, match=match):
        int8kit.dequantize(torch.ones(3, dtype=torch.uint8), scale, zero_point)


def test_zero_point_and_scale_ranges_in_the_message():
    with pytest.raises(ValueError, match=r"scale .*got 0\.0 at index 1"):  # per channel
        int8kit.quantize(torch.ones(3), torch.tensor([0.1, 0.0, 0.2]), [1, 2, 3], axis=0)
    with pytest.raises(ValueError, match=r"zero_point must be in \[0, 255\] for 8-bit unsigned "
                                         r"values, got 256"):
        int8kit.quantize(torch.ones(2), 0.1, 256)
    with pytest.raises(ValueError, match=r"zero_point must be in \[-8, 7\] for 4-bit signed"):
        int8kit.quantize(torch.ones(2), 0.1, 8, bits=4, signed=True)
    with pytest.raises(ValueError, match=r"zero_point must be in \[-2147483648, 2147483647\]"):
        int8kit.dequantize(torch.ones(2, dtype=torch.uint8), 0.1, 2**31)
    # A subnormal scale has no float32 reciprocal: 0 * inf would quantize 0 as NaN -> 0.
    with pytest.raises(ValueError, match=r"scale must be at least 2\.93874e-39"):
        int8kit.quantize(torch.zeros(2), 1e-40, 128)
    assert int8kit.dequantize(torch.tensor([3], dtype=torch.uint8), 1e-40, 0).item() > 0


def test_parameters_in_other_containers_still_work():
    x = torch.tensor([[0.5, -1.0, 2.0]])
    ref = int8kit.quantize(x, 0.1, 10)
    for scale, zp in ((np.float64(0.1), np.int16(10)), (torch.tensor(0.1, dtype=torch.float64),
                                                        torch.tensor(10, dtype=torch.uint8)),
                      ([0.1], [10]), (np.array(0.1), 10)):
        assert torch.equal(int8kit.quantize(x, scale, zp), ref)
    assert torch.equal(int8kit.quantize(x, [0.1, 0.1, 0.1], (10, 10, 10), axis=1), ref)
    assert int8kit.quantize(torch.tensor([4.0]), 2, 0).item() == 2  # an int scale
