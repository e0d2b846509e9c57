"""QuantLinear: numerics (vs torch.ao's reference and vs float), shapes, dtypes, state, errors."""

import copy
import gc
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import int8kit
from int8kit import _C as C
from int8kit._custom_ops import linear_dynamic_impl
from int8kit.nn import NotConvertibleError, QuantLinear

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated")


def _linear(k, n, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def _x(*shape, seed=1, scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# --- against torch.ao's reference dynamic quantized linear ------------------------------

@pytest.mark.parametrize("engine", ["fbgemm", "x86"])
@pytest.mark.parametrize("m,k,n", [(1, 64, 32), (7, 300, 65), (33, 768, 129), (16, 2048, 96)])
def test_matches_torch_ao_dynamic_linear(engine, m, k, n):
    """Same scheme on both sides: int8 symmetric per-tensor weight (torch's default
    weight observer), uint8 per-tensor activations over the full range (reduce_range=False,
    calling torch's op directly because nnqd.Linear.forward hard-codes reduce_range=True).

    The int8 weights and scales must be identical. The int32 products are exact on both
    sides, so outputs differ only (a) by float rounding of the epilogue, and (b) where the
    two libraries round an activation differently: int8kit computes round(x/s) + zp (the
    design contract, torch's fake_quantize and ATen's quantize_val), fbgemm adds zp before
    rounding (in float32, or fused), which can round differently when x/s lies within
    float rounding of a .5 tie. Each such activation moves every output of its row by at
    most 128 steps (step = a_scale * w_scale, |q_w| <= 128). We count the near-tie
    activations per row (T) and require |diff| <= T * 128 * step + float tolerance.
    """
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"torch has no {engine} engine here")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.nn.quantized.dynamic as nnqd
        from torch.ao.quantization import default_dynamic_qconfig
    lin = _linear(k, n, seed=m)
    lin.qconfig = default_dynamic_qconfig
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        ref = nnqd.Linear.from_float(lin)
        ours = QuantLinear.from_float(lin, weight="per_tensor", activation="per_tensor")
        assert torch.equal(ref.weight().int_repr(), ours.qweight)
        assert ref.weight().q_scale() == float(ours.weight_scale)
        x = _x(m, k, seed=m) + 0.3
        y_ref = torch.ops.quantized.linear_dynamic(x, ref._packed_params._packed_params,
                                                   reduce_range=False)
    finally:
        torch.backends.quantized.engine = previous
    y = ours(x)
    a_scale, a_zp = int8kit.choose_qparams(x)
    ties = _near_ties(x, a_scale, a_zp).sum(1, keepdim=True)
    step = float(a_scale) * float(ours.weight_scale)
    diff = (y - y_ref).abs()
    float_tol = 1e-5 * float(y_ref.abs().max())
    assert torch.all(diff <= ties * 128 * step + float_tol)
    assert float((ties == 0).float().mean()) >= 0.5  # most rows are compared to rounding


def _near_ties(x, scale, zp):
    """Activations whose x/s lies within a few float32 ulps (of x/s + zp) of a .5 tie."""
    t = x * torch.reciprocal(scale.float())
    ulp = torch.finfo(torch.float32).eps * (t.abs() + abs(int(zp)))
    return (t - torch.floor(t) - 0.5).abs() <= 4 * ulp


# --- against float ------------------------------------------------------------------------

def _error_bound(ql: QuantLinear, x2d: torch.Tensor, per_row: bool) -> torch.Tensor:
    """|y_q - y_float| <= sa/2 * sum_k |w_hat| + sw/2 * sum_k |x|  (plus float rounding):
    each activation is off by at most half its step sa, each weight by half its step sw."""
    if per_row:
        sa = torch.stack([int8kit.choose_qparams(r).scale for r in x2d])
    else:
        sa = int8kit.choose_qparams(x2d).scale.expand(x2d.shape[0])
    w_hat = ql.dequantize_weight()
    sw = ql.weight_scale.expand(ql.out_features)
    bound = (sa[:, None] / 2 * w_hat.abs().sum(1)[None, :]
             + x2d.abs().sum(1)[:, None] * sw[None, :] / 2)
    return bound * (1 + 1e-4) + 1e-5


@pytest.mark.parametrize("weight", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("activation", ["per_row", "per_tensor"])
def test_close_to_float_within_quantization_bound(weight, activation):
    lin = _linear(200, 70)
    x = _x(9, 200)
    ql = QuantLinear.from_float(lin, weight=weight, activation=activation)
    err = (ql(x) - lin(x).detach()).abs()
    bound = _error_bound(ql, x, activation == "per_row")
    assert torch.all(err <= bound), float((err - bound).max())
    assert float(err.max()) < 0.05 * float(lin(x).detach().abs().max())  # and it is actually small


def test_per_row_beats_per_tensor_on_rows_of_different_scale():
    lin = _linear(128, 64)
    x = _x(8, 128) * torch.logspace(-3, 1, 8)[:, None]  # rows 10^4 apart in magnitude
    y = lin(x).detach()
    rel = {}
    for act in ("per_row", "per_tensor"):
        yq = QuantLinear.from_float(lin, activation=act)(x)
        rel[act] = float(((yq - y).norm(dim=1) / y.norm(dim=1)).max())
    assert rel["per_row"] < 0.05 < rel["per_tensor"]


def test_weights_quantized_symmetric_per_output_channel():
    lin = _linear(40, 12)
    with torch.no_grad():
        lin.weight[3] *= 100  # one large row must not coarsen the others
    ql = QuantLinear.from_float(lin)
    assert ql.qweight.dtype == torch.int8 and ql.weight_scale.shape == (12,)
    scale, zp = int8kit.choose_qparams(lin.weight.detach(), symmetric=True, signed=True, axis=0)
    assert torch.equal(ql.weight_scale, scale) and torch.all(zp == 0)
    err = (ql.dequantize_weight() - lin.weight.detach()).abs()
    assert torch.all(err <= ql.weight_scale[:, None] / 2 + 1e-6 * lin.weight.detach().abs())
    assert torch.equal(ql.bias, lin.bias.detach())  # bias stays float, untouched
    assert QuantLinear.from_float(lin, weight="per_tensor").weight_scale.shape == (1,)


# --- shapes, dtypes, paths ------------------------------------------------------------------

@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 1, 4)])
def test_any_leading_shape(lead):
    lin = _linear(24, 10)
    ql = QuantLinear.from_float(lin)
    x = _x(*lead, 24)
    y = ql(x)
    assert y.shape == (*lead, 10) and y.dtype == torch.float32
    assert torch.equal(y.reshape(-1, 10), ql(x.reshape(-1, 24)))


def test_noncontiguous_input():
    ql = QuantLinear.from_float(_linear(16, 8))
    x = _x(16, 6).t()  # [6, 16], transposed view
    assert torch.equal(ql(x), ql(x.contiguous()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_in_same_dtype_out(dtype):
    ql = QuantLinear.from_float(_linear(32, 16))
    x = _x(4, 7, 32).to(dtype)
    y = ql(x)
    assert y.dtype == dtype
    assert torch.equal(y, ql(x.float()).to(dtype))


def test_no_bias():
    lin = _linear(20, 6, bias=False)
    ql = QuantLinear.from_float(lin)
    assert ql.bias is None and "bias" not in ql.state_dict()
    x = _x(3, 20)
    assert torch.all((ql(x) - lin(x).detach()).abs() <= _error_bound(ql, x, True))


def test_eager_path_equals_custom_op():
    ql = QuantLinear.from_float(_linear(50, 30), activation="per_tensor")
    x = _x(5, 50)
    via_op = torch.ops.int8kit.linear_dynamic(x, ql.packed, ql.weight_scale, ql.bias, 30,
                                              False, False, 0)
    assert torch.equal(ql(x), via_op)
    direct = linear_dynamic_impl(x, ql.packed, ql.weight_scale, ql.bias, 30, False, True, 1)
    assert torch.equal(direct, torch.relu(via_op))


@pytest.mark.parametrize("make_x", [
    lambda: _x(5, 50), lambda: _x(2, 3, 50), lambda: _x(50), lambda: _x(50, 4).t(),
    lambda: _x(3, 50).requires_grad_(), lambda: _x(6, 100)[:, ::2]],
    ids=["2d", "3d", "1d", "transposed", "requires_grad", "strided"])
def test_fast_eager_path_equals_checked_path(make_x):
    """forward admits plain float32 calls with one test; the rest goes through the full
    checks. Both routes must give the same bits, shape and dtype."""
    ql = QuantLinear.from_float(_linear(50, 30))
    x = make_x()
    y = ql(x)
    assert torch.equal(y, ql._forward_checked(x)) and not y.requires_grad
    ref = ql(x.detach().contiguous().reshape(-1, 50)).reshape(*x.shape[:-1], 30)
    assert y.shape == ref.shape and torch.equal(y, ref)


@pytest.mark.parametrize("make_x", [
    lambda: _x(5, 50), lambda: _x(2, 3, 50), lambda: _x(50), lambda: _x(7, 50)[2:],
    lambda: _x(50, 1).t(), lambda: _x(3, 50).requires_grad_(), lambda: torch.empty(0, 50)],
    ids=["2d", "3d", "1d", "offset_view", "size1_dim_any_stride", "requires_grad", "empty"])
def test_plain_float32_input_takes_the_dlpack_route(make_x, monkeypatch):
    """The common call must not fall back to the checked path (a silent fallback would only
    show as lost speed): its output is exact, shaped, aligned and owns its memory."""
    ql = QuantLinear.from_float(_linear(50, 30))
    x = make_x()
    ref = ql._forward_checked(x)

    def fail(_x):
        raise AssertionError("took the checked path")

    monkeypatch.setattr(ql, "_forward_checked", fail)
    y = ql(x)
    assert y.shape == (*x.shape[:-1], 30) and y.dtype == torch.float32
    assert torch.equal(y, ref) and not y.requires_grad and y.is_contiguous()
    assert y.data_ptr() % 64 == 0
    del x
    gc.collect()
    y.add_(1)  # the output's memory is its own and writable
    assert torch.equal(y, ref + 1) and np.array_equal(y.numpy(), (ref + 1).numpy())


@pytest.mark.parametrize("make_x", [
    lambda: _x(50, 4).t(), lambda: _x(6, 100)[:, ::2], lambda: _x(4, 50).double(),
    lambda: _x(3, 49), lambda: torch.tensor(1.0), lambda: _x(3, 50).to(torch.bfloat16)],
    ids=["transposed", "strided", "float64", "wrong_k", "0d", "bfloat16"])
def test_the_dlpack_call_declines_what_it_cannot_read(make_x):
    """None (the module then takes its checked path), never a wrong read."""
    ql = QuantLinear.from_float(_linear(50, 30))
    x = make_x()
    assert C.linear_dynamic_dlpack(torch._C._to_dlpack(x), *ql._kernel_views(), True, False,
                                   1) is None


def test_the_dlpack_call_declines_non_capsules_and_frees_unused_outputs():
    ql = QuantLinear.from_float(_linear(50, 30))
    views = ql._kernel_views()
    x = _x(4, 50)
    cap = torch._C._to_dlpack(x)
    torch._C._from_dlpack(cap)  # consumed: renamed "used_dltensor", no longer readable
    for not_readable in (cap, x, x.numpy(), None, 3):
        assert C.linear_dynamic_dlpack(not_readable, *views, True, False, 1) is None
    for _ in range(3):  # an output capsule nobody adopts frees its tensor when collected
        out = C.linear_dynamic_dlpack(torch._C._to_dlpack(x), *views, True, False, 1)
        assert "dltensor" in repr(out)
        del out
    gc.collect()
    out = C.linear_dynamic_dlpack(torch._C._to_dlpack(x), *views, True, False, 1)
    assert torch.equal(torch._C._from_dlpack(out), ql._forward_checked(x))


def test_deterministic_across_thread_counts():
    lin = _linear(300, 200)
    x = _x(64, 300)
    outs = [QuantLinear.from_float(lin, threads=t)(x) for t in (1, 2, 3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_every_kernel_path_gives_identical_output():
    ql = QuantLinear.from_float(_linear(70, 40))
    x = _x(9, 70)
    outs = []
    for isa in int8kit.cpu_info()["supported_paths"]:
        with int8kit.ops.use_isa(isa):
            outs.append(ql(x))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_empty_batch_gives_empty_output():
    ql = QuantLinear.from_float(_linear(8, 5))
    assert ql(torch.empty(0, 8)).shape == (0, 5)
    assert ql(torch.empty(2, 0, 8)).shape == (2, 0, 5)
    assert ql(torch.empty(0, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


# --- bad input ----------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    ql = QuantLinear.from_float(_linear(8, 5))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\] \(in_features\)"):
        ql(torch.randn(3, 9))
    with pytest.raises(ValueError, match="in_features"):
        ql(torch.tensor(1.0))
    with pytest.raises(TypeError, match="x must be float32, bfloat16, float16 or float64.*int64"):
        ql(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ql([[0.0] * 8])
    # A tensor on another device (meta stands in for CUDA on a CPU-only machine).
    with pytest.raises(ValueError, match="x must be a CPU tensor.*meta"):
        ql(torch.empty(3, 8, device="meta"))
    with pytest.raises(ValueError, match="x must be a dense tensor"):
        ql(torch.randn(3, 8).to_sparse())
    with pytest.raises(ValueError, match="x must be a dense tensor, got a nested tensor"):
        ql(torch.nested.nested_tensor([torch.randn(2, 8), torch.randn(3, 8)]))
    x = torch.randn(3, 8)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ql(x)


def test_cuda_tensor_rejected(monkeypatch):
    ql = QuantLinear.from_float(_linear(8, 5))
    if torch.cuda.is_available():
        x = torch.randn(2, 8, device="cuda")
    else:  # simulate: a tensor whose device reports cuda
        x = torch.empty(2, 8, device="meta")
        monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    with pytest.raises(ValueError, match="x must be a CPU tensor.*cuda"):
        ql(x)


def test_constructor_and_from_float_validation():
    with pytest.raises(ValueError, match="in_features"):
        QuantLinear(0, 4)
    with pytest.raises(ValueError, match="MAX_K"):
        QuantLinear(int8kit.ops.MAX_K + 1, 4)
    with pytest.raises(ValueError, match="weight must be one of"):
        QuantLinear(4, 4, weight="per_row")
    with pytest.raises(ValueError, match="activation must be one of"):
        QuantLinear.from_float(_linear(4, 4), activation="per_channel")
    with pytest.raises(ValueError, match="threads"):
        QuantLinear(4, 4, threads=0)
    with pytest.raises(TypeError, match="nn.Linear"):
        QuantLinear.from_float(nn.Conv2d(3, 3, 1))
    with pytest.raises(NotConvertibleError, match="MAX_K"):
        QuantLinear.from_float(nn.Linear(int8kit.ops.MAX_K + 1, 1))
    with pytest.raises(NotConvertibleError, match="device meta"):
        QuantLinear.from_float(nn.Linear(4, 4, device="meta"))
    lin = _linear(4, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("inf")
    with pytest.raises(NotConvertibleError, match="NaN or Inf"):
        QuantLinear.from_float(lin)


# --- inspection, memory, state ------------------------------------------------------------

def test_repr_and_weight_bytes():
    ql = QuantLinear.from_float(_linear(256, 64))
    r = repr(ql)
    assert "in_features=256" in r and "per_channel" in r and "per_row" in r
    assert "per_tensor" in repr(QuantLinear.from_float(_linear(4, 4), weight="per_tensor"))
    stored = 256 * 64 + 64 * 4 + 64 * 4  # int8 weight + float32 scales + float32 bias
    assert ql.weight_bytes(include_packed=False) == stored  # the saved form
    # In memory the weight exists once, packed: no int8 buffer next to it.
    assert "qweight" not in dict(ql.named_buffers())
    assert ql.weight_bytes() == ql.packed.numel() + 64 * 4 + 64 * 4
    assert ql.packed.numel() >= 256 * 64
    assert ql.weight_bytes() < (256 * 64 + 64) * 4  # below the float layer's footprint


def test_state_dict_holds_plain_int8_weights_and_reloads():
    lin = _linear(40, 24)
    ql = QuantLinear.from_float(lin)
    sd = ql.state_dict()
    assert set(sd) == {"qweight", "weight_scale", "bias"}  # packing is never saved
    assert sd["qweight"].dtype == torch.int8 and sd["weight_scale"].dtype == torch.float32
    fresh = QuantLinear(40, 24)
    x = _x(5, 40)
    assert not torch.equal(fresh(x), ql(x))
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.packed, ql.packed)  # repacked from the int8 weight
    assert torch.equal(fresh(x), ql(x))
    with pytest.raises(RuntimeError, match="weight_scale"):
        QuantLinear(40, 24, weight="per_tensor").load_state_dict(sd)


def test_whole_model_pickles_without_the_packing():
    model = nn.Sequential(QuantLinear.from_float(_linear(30, 20)), nn.ReLU(),
                          QuantLinear.from_float(_linear(20, 10, seed=3)))
    x = _x(4, 30)
    buf = io.BytesIO()
    torch.save(model, buf)
    packed_bytes = sum(m.packed.numel() for m in model if isinstance(m, QuantLinear))
    assert buf.tell() < packed_bytes + 30 * 20 + 20 * 10 + 4000  # packing left out
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded[0].packed, model[0].packed)
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), model(x))


def test_float64_in_float64_out():
    """A float64 model converts and takes its own float64 inputs (computed via float32)."""
    ql = QuantLinear.from_float(_linear(16, 8).double())
    x = _x(3, 16)
    y = ql(x.double())
    assert y.dtype == torch.float64
    assert torch.equal(y, ql(x).double())


def test_failed_load_state_dict_leaves_the_module_unchanged():
    """torch copies each matching buffer in place and reports the others; a module that
    then repacked its weight would run with a half-loaded state."""
    ql = QuantLinear.from_float(_linear(40, 24), weight="per_tensor")
    x = _x(5, 40)
    before = ql(x)
    sd = QuantLinear.from_float(_linear(40, 24, seed=5)).state_dict()  # per-channel scales
    with pytest.raises(RuntimeError, match="weight_scale"):
        ql.load_state_dict(sd)
    assert torch.equal(ql(x), before)
    bad_w = dict(QuantLinear.from_float(_linear(40, 24, seed=5), weight="per_tensor")
                 .state_dict(), qweight=torch.zeros(24, 41, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="qweight"):
        ql.load_state_dict(bad_w)
    assert torch.equal(ql(x), before)


def test_nan_or_inf_bias_is_not_convertible():
    for bad in (float("nan"), float("inf")):
        lin = _linear(8, 4)
        with torch.no_grad():
            lin.bias[1] = bad
        with pytest.raises(NotConvertibleError, match="bias contains NaN or Inf"):
            QuantLinear.from_float(lin)
        q = int8kit.quantize_dynamic(nn.Sequential(lin))
        assert isinstance(q[0], nn.Linear)
        row = q.int8kit_report.layers[0]
        assert not row.converted and "bias contains NaN or Inf" in row.detail


def test_dtype_casts_keep_scales_and_bias_float32():
    ql = QuantLinear.from_float(_linear(16, 8))
    x = _x(3, 16)
    expected = ql(x)
    ql.to(torch.bfloat16)
    ql.half()
    assert ql.weight_scale.dtype == torch.float32 and ql.bias.dtype == torch.float32
    assert ql.qweight.dtype == torch.int8
    assert torch.equal(ql(x), expected)


def test_replaced_buffers_are_read_not_stale_views():
    """The modules keep numpy views of their buffers between calls; a buffer replaced in
    any way (attribute, the buffer dict, load_state_dict, a static module's input
    parameters) must be what the next call reads."""
    from int8kit.nn.static import StaticQuantLinear

    x = _x(4, 8)
    ql = QuantLinear.from_float(_linear(8, 5))
    other = QuantLinear.from_float(_linear(8, 5, seed=3))
    ql(x)  # views made
    ql.bias = other.bias.clone()
    ql._buffers["weight_scale"] = other.weight_scale.clone()  # as torch.func does
    expected = x @ (ql.qweight.float() * ql.weight_scale[:, None]).T + ql.bias
    got = ql(x)
    assert torch.allclose(got, expected, atol=0.05 * float(expected.abs().max()))
    ql.load_state_dict(other.state_dict())  # a new packed weight
    assert torch.equal(ql(x), other(x))
    ql.bias.add_(1.0)  # in place: shows through the view
    assert torch.allclose(ql(x), other(x) + 1.0, atol=1e-5)
    # New memory under the same tensor objects: the old views would read freed memory.
    ql.bias.data = torch.zeros(5)
    assert torch.allclose(ql(x), other(x) - other.bias, atol=1e-5)
    ql.share_memory()  # moves every buffer to shared memory
    assert torch.allclose(ql(x), other(x) - other.bias, atol=1e-5)
    ql.bias.set_(other.bias.clone())
    assert torch.equal(ql(x), other(x))

    sl = StaticQuantLinear.from_float(_linear(8, 5), torch.tensor([0.02]), torch.tensor([128]))
    y = sl(x)
    sl.set_input_qparams(0.05, 100)  # input_scale and zero point: buffers 4 and 5
    fresh = StaticQuantLinear.from_float(_linear(8, 5), torch.tensor([0.05]), torch.tensor([100]))
    assert torch.equal(sl(x), fresh(x)) and not torch.equal(sl(x), y)
    sl.input_scale = torch.tensor([0.02])  # replaced, not copied into
    sl.input_zero_point = torch.tensor([128], dtype=torch.int32)
    assert torch.equal(sl(x), y)
