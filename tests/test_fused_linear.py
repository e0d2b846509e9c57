"""The fused linear entry points (_C.linear_dynamic / linear_static, one native call per
forward) against the two-step ops route they replace, bit for bit, on every kernel path;
and the packed-only weight storage of QuantLinear / StaticQuantLinear."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import int8kit
from int8kit import _C, ops
from int8kit._custom_ops import linear_dynamic_impl
from int8kit.nn import QuantLinear
from int8kit.nn.static import StaticQuantLinear
from int8kit.static import _max_pool_u8

SHAPES = [(1, 1, 1), (1, 768, 48), (3, 7, 5), (17, 64, 70), (64, 300, 33)]  # M, K, N


def _linear(k, n, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).eval()


def _x(m, k, seed=1):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 3


def _two_step_dynamic(ql, x, per_row, relu=False):
    q, s, z = ops.quantize_dynamic_u8(x, per_row=per_row)
    return ops.gemm_f32(q, z, s, ops.PackedWeight(ql.packed), ql.weight_scale, ql.bias,
                        relu=relu)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("weight,activation", [("per_channel", "per_row"),
                                               ("per_tensor", "per_tensor")])
def test_dynamic_fused_equals_two_step(path, m, k, n, weight, activation):
    ql = QuantLinear.from_float(_linear(k, n, bias=m != 3), weight=weight,
                                activation=activation)
    x = _x(m, k)
    per_row = activation == "per_row"
    with ops.use_isa(path):
        expected = _two_step_dynamic(ql, x, per_row)
        assert torch.equal(ql(x), expected)
        for relu in (False, True):
            via_impl = linear_dynamic_impl(x, ql.packed, ql.weight_scale, ql.bias, n, per_row,
                                           relu, 1)
            assert torch.equal(via_impl, _two_step_dynamic(ql, x, per_row, relu))


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_static_fused_equals_quantize_then_gemm(path, m, k, n):
    sl = StaticQuantLinear.from_float(_linear(k, n), 0.05, 117, relu=True)
    x = _x(m, k)
    with ops.use_isa(path):
        q = sl.quantize_input(x)
        assert torch.equal(sl(x), sl.forward_quantized(q))
        out = (torch.tensor([0.03]), torch.tensor([9], dtype=torch.int32))
        y8 = sl.forward_float(x, out)
        assert y8.dtype == torch.uint8 and torch.equal(y8, sl.forward_quantized(q, out=out))
        x3 = x.reshape(1, m, k).to(torch.bfloat16)
        assert torch.equal(sl(x3), sl.forward_quantized(sl.quantize_input(x3)).to(torch.bfloat16))


# Tall inputs take the row-block route (quantize a block of rows, then its GEMM tiles, on
# whichever thread claimed it): K=1001 gives 24-row blocks, so M=200 makes 8 full blocks
# and a tail of 8 rows; K*N above 1M switches to tall blocks (the weight leaves L2). AVX2
# blocks are at least 192 rows (it widens the weight once per block): there only the last
# shape takes the route (10 blocks and a tail of 180 rows).
ROW_BLOCK_SHAPES = [(200, 1001, 70), (100, 1001, 33), (2100, 1030, 1100)]


@pytest.mark.parametrize("m,k,n", ROW_BLOCK_SHAPES)
def test_row_block_route_equals_two_step_at_every_thread_count(path, m, k, n):
    if path == "scalar" and m * k * n > 10**8:
        pytest.skip("too slow on the scalar path; the route is the same on every path")
    ql = QuantLinear.from_float(_linear(k, n))
    x = _x(m, k)
    with ops.use_isa(path):
        for relu in (False, True):
            expected = _two_step_dynamic(ql, x, True, relu)
            for threads in (1, 2, 3):
                y = linear_dynamic_impl(x, ql.packed, ql.weight_scale, ql.bias, n, True, relu,
                                        threads)
                assert torch.equal(y, expected)


def test_row_block_route_rejects_nan_in_a_late_block():
    ql = QuantLinear.from_float(_linear(1001, 40))
    x = _x(400, 1001)
    x[390, 5] = float("nan")
    for threads in (1, 2):
        with pytest.raises(ValueError, match="NaN or Inf"):
            linear_dynamic_impl(x, ql.packed, ql.weight_scale, ql.bias, 40, True, False, threads)


# linear_dynamic_multi (attention's q, k, v on one input): x quantized once, each output
# bit-identical to its own linear_dynamic call, on both routes (short M: quantize then
# GEMMs; tall M: row blocks shared by the layers).
@pytest.mark.parametrize("m", [5, 300])
@pytest.mark.parametrize("per_row", [True, False])
def test_multi_layer_call_equals_one_call_per_layer(path, m, per_row):
    layers = [QuantLinear.from_float(_linear(1001, n, seed=n, bias=n != 33)) for n in (40, 33, 70)]
    x = _x(m, 1001).numpy()
    views = [ql._kernel_views() for ql in layers]
    with ops.use_isa(path):
        for threads in (1, 2, 3):
            got = _C.linear_dynamic_multi(x, [v[0] for v in views], [v[1] for v in views],
                                          [v[2] for v in views], per_row, threads)
            assert len(got) == 3
            for (packed, ws, bias), y in zip(views, got):
                want = _C.linear_dynamic(x, packed, ws, bias, per_row, False, threads)
                assert y.shape == want.shape and (y.view("int32") == want.view("int32")).all()


def test_multi_layer_call_checks_its_arguments():
    a, b = QuantLinear.from_float(_linear(8, 4)), QuantLinear.from_float(_linear(9, 4))
    (pa, wa, ba), (pb, wb, bb) = a._kernel_views(), b._kernel_views()
    x = _x(2, 8).numpy()
    with pytest.raises(ValueError, match="K=8"):  # every layer must take x's K
        _C.linear_dynamic_multi(x, [pa, pb], [wa, wb], [ba, bb], True, 1)
    with pytest.raises(ValueError, match="equal length"):
        _C.linear_dynamic_multi(x, [pa, pa], [wa], [ba, ba], True, 1)
    bad = x.copy()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        _C.linear_dynamic_multi(bad, [pa, pa], [wa, wa], [ba, ba], True, 1)
    assert [y.shape for y in _C.linear_dynamic_multi(x[:0], [pa], [wa], [ba], True, 1)] == [(0, 4)]


def test_fused_calls_reject_nan_and_inf():
    ql = QuantLinear.from_float(_linear(8, 4))
    sl = StaticQuantLinear.from_float(_linear(8, 4), 0.1, 3)
    for bad in (float("nan"), float("inf")):
        x = _x(2, 8)
        x[1, 3] = bad
        for mod in (ql, sl):
            with pytest.raises(ValueError, match="NaN or Inf"):
                mod(x)
        with pytest.raises(ValueError, match="NaN or Inf"):
            sl.quantize_input(x)


@pytest.mark.parametrize("field, value", [("bias", float("nan")), ("w_scale", -1.0),
                                          ("w_scale", float("inf"))])
def test_bad_scales_or_bias_raise_on_both_routes(field, value):
    """A few rows go through gemm() and its checks; many rows take the fused row-block
    route, which calls the kernels directly: it must check the same (a NaN bias raised at
    M = 8 and came out as NaN rows at M = 2000)."""
    ql = QuantLinear.from_float(_linear(64, 16))
    packed, ws, bias = (v.copy() for v in ql._kernel_views())
    (bias if field == "bias" else ws)[3] = value
    for m in (8, 2000):
        with pytest.raises(ValueError, match=field):
            _C.linear_dynamic(_x(m, 64).numpy(), packed, ws, bias, True, False, 1)


def test_fused_binding_checks_its_arguments():
    ql = QuantLinear.from_float(_linear(8, 4))
    packed, ws, bias = ql._kernel_views()
    x = _x(2, 8).numpy()
    with pytest.raises(ValueError, match="K=8"):
        _C.linear_dynamic(_x(2, 9).numpy(), packed, ws, bias, True, False, 1)
    with pytest.raises(TypeError, match="float32"):
        _C.linear_dynamic(x.astype("float64"), packed, ws, bias, True, False, 1)
    with pytest.raises(ValueError, match="contiguous"):
        _C.linear_dynamic(_x(8, 2).numpy().T, packed, ws, bias, True, False, 1)
    with pytest.raises(ValueError, match="bias"):
        _C.linear_dynamic(x, packed, ws, bias[:3], True, False, 1)
    assert _C.linear_dynamic(x[:0], packed, ws, bias, True, False, 1).shape == (0, 4)


def test_non_contiguous_and_empty_inputs():
    ql = QuantLinear.from_float(_linear(8, 4))
    x = _x(5, 16)[:, ::2]
    assert torch.equal(ql(x), ql(x.contiguous()))
    assert ql(torch.empty(0, 8)).shape == (0, 4)
    sl = StaticQuantLinear.from_float(_linear(8, 4), 0.1, 3)
    assert torch.equal(sl(x), sl(x.contiguous())) and sl(torch.empty(0, 8)).shape == (0, 4)


# --- packed-only storage ----------------------------------------------------------------

@pytest.mark.parametrize("cls", [QuantLinear, StaticQuantLinear])
def test_weight_is_held_once_and_saved_as_plain_int8(cls):
    lin = _linear(40, 24)
    mod = (QuantLinear.from_float(lin) if cls is QuantLinear
           else StaticQuantLinear.from_float(lin, 0.1, 3))
    ref = QuantLinear.from_float(lin).dequantize_weight()
    assert "qweight" not in dict(mod.named_buffers())
    w = mod.qweight
    assert w.dtype == torch.int8 and w.shape == (24, 40)
    assert torch.equal(mod.dequantize_weight(), ref)
    with pytest.raises(AttributeError):
        mod.qweight = w
    sd = mod.state_dict()
    assert list(sd)[:3] == ["qweight", "weight_scale", "bias"]
    assert torch.equal(sd["qweight"], w)
    x = _x(3, 40)
    fresh = cls(40, 24)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.packed, mod.packed) and torch.equal(fresh(x), mod(x))
    buf = io.BytesIO()
    torch.save(mod, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), mod(x)) and "qweight" not in dict(loaded.named_buffers())
    assert torch.equal(copy.deepcopy(mod)(x), mod(x))


def test_load_state_dict_checks_qweight():
    sd = QuantLinear.from_float(_linear(40, 24)).state_dict()
    mod = QuantLinear(40, 24)
    before = mod.packed.clone()
    with pytest.raises(RuntimeError, match="size mismatch for qweight"):
        mod.load_state_dict(dict(sd, qweight=torch.zeros(24, 41, dtype=torch.int8)))
    with pytest.raises(RuntimeError, match="qweight.*int8"):
        mod.load_state_dict(dict(sd, qweight=torch.zeros(24, 40)))
    assert torch.equal(mod.packed, before)  # a rejected weight is never packed
    with pytest.raises(RuntimeError, match="Missing key.*qweight"):
        mod.load_state_dict({k: v for k, v in sd.items() if k != "qweight"})
    mod.load_state_dict({k: v for k, v in sd.items() if k != "qweight"}, strict=False)
    assert torch.equal(mod.packed, before)


def test_readme_tour_model_is_about_four_times_smaller():
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    q = int8kit.quantize_dynamic(model)
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    q_bytes = sum(m.weight_bytes() for m in q.modules() if isinstance(m, QuantLinear))
    assert q.int8kit_report.model_bytes_after == q_bytes
    assert float_bytes / q_bytes > 3.5


# --- uint8 max pooling in the hand-off ----------------------------------------------------

@pytest.mark.parametrize("h,w", [(8, 8), (11, 11), (12, 12), (16, 16), (181, 181), (182, 181)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_uint8_max_pool_equals_torch_nchw(h, w, channels_last):
    q = torch.randint(0, 256, (2, h, w, 8), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(h * w)).permute(0, 3, 1, 2)
    if not channels_last:
        q = q.contiguous()
    for pool in (nn.MaxPool2d(2), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)):
        ref = torch.nn.functional.max_pool2d(q.contiguous(), pool.kernel_size, pool.stride,
                                             pool.padding, pool.dilation, pool.ceil_mode)
        assert torch.equal(_max_pool_u8(q, pool), ref)
