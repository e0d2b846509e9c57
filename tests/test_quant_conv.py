"""QuantConv2d: against torch's reference quantized conv (same scheme) and float, memory
formats and dtypes, state_dict / pickling, torch.compile / torch.export, bad inputs."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import int8kit
from int8kit.nn._base import NotConvertibleError
from int8kit.nn.conv import QuantConv2d

# (in, out, kernel, stride, padding, dilation, groups, N, H, W)
CONFIGS = [
    (3, 8, 3, 1, 1, 1, 1, 2, 9, 11),
    (16, 32, 3, 2, 1, 1, 2, 1, 13, 10),
    (8, 8, (3, 5), (2, 1), (0, 2), (2, 1), 1, 3, 11, 12),
    (24, 48, 1, 1, 0, 1, 1, 2, 7, 5),
    (24, 16, 1, 2, 0, 1, 4, 1, 8, 8),
    (32, 32, 3, 1, 1, 1, 32, 2, 10, 9),       # depthwise
    (40, 40, 5, 2, 2, 1, 40, 1, 15, 15),      # depthwise 5x5 strided
    (12, 24, 3, 1, 1, 1, 12, 1, 6, 7),        # depthwise multiplier 2
]


def torch_reference(conv: nn.Conv2d, q: QuantConv2d, x: torch.Tensor) -> torch.Tensor:
    """torch.ao's reference quantized conv for the same scheme: quint8 per-tensor MinMax
    activations (torch's observer), the int8 per-channel weights, float conv of the
    dequantized values."""
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    obs(x)
    s, z = obs.calculate_qparams()
    xq = torch.quantize_per_tensor(x, float(s), int(z), torch.quint8).dequantize()
    w = q.dequantize_weight()
    return F.conv2d(xq.double(), w.double(), None if conv.bias is None else conv.bias.double(),
                    conv.stride, q.padding, conv.dilation, conv.groups), float(s)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_torch_reference_and_float(cfg):
    torch.manual_seed(hash(str(cfg)) % 1000)
    ic, oc, k, s, p, d, g, n, h, w = cfg
    conv = nn.Conv2d(ic, oc, k, s, p, d, g)
    q = QuantConv2d.from_float(conv)
    x = torch.randn(n, ic, h, w) * 2 + 0.5
    y = q(x)
    with torch.no_grad():
        ref, x_scale = torch_reference(conv, q, x)
        yf = conv(x)
    assert y.shape == yf.shape and y.dtype == torch.float32
    # Same integers, same scales: only float32 rounding of the final fma differs.
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # Against float: each product is off by at most half a step of x and of w.
    k_len = (ic // g) * q.kernel_size[0] * q.kernel_size[1]
    w_err = (q.weight_scale.max() / 2).item()
    bound = k_len * (x_scale / 2 * conv.weight.abs().max().item()
                     + w_err * x.abs().max().item() + x_scale / 2 * w_err)
    assert (y - yf).abs().max().item() <= bound
    assert (y - yf).abs().max().item() > 0  # it really ran in int8


def test_torch_ao_quantized_conv_same_integers():
    """torch.ops.quantized.conv2d (fbgemm / x86) with the same qparams agrees after
    requantization to within one output step."""
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines \
        else torch.backends.quantized.supported_engines[-1]
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, 1, 1)
    q = QuantConv2d.from_float(conv)
    x = torch.randn(1, 16, 8, 8)
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    obs(x)
    s, z = obs.calculate_qparams()
    xq = torch.quantize_per_tensor(x, float(s), int(z), torch.quint8)
    wq = torch.quantize_per_channel(q.dequantize_weight(), q.weight_scale.double(),
                                    torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(wq.int_repr(), q.qweight)
    packed = torch.ops.quantized.conv2d_prepack(wq, conv.bias.detach(), [1, 1], [1, 1], [1, 1], 1)
    y = q(x)
    out_scale = float((y.max() - y.min()) / 255)
    out_zp = int(round(-y.min().item() / out_scale))
    yq = torch.ops.quantized.conv2d(xq, packed, out_scale, out_zp)
    ours = torch.clamp(torch.round(y / out_scale) + out_zp, 0, 255)
    assert (ours - yq.int_repr().float()).abs().max().item() <= 1


def test_memory_formats_and_dtypes():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 12, 3, 1, 1)
    q = QuantConv2d.from_float(conv)
    x = torch.randn(2, 8, 9, 7)
    y = q(x)
    assert y.is_contiguous()
    xc = x.contiguous(memory_format=torch.channels_last)
    yc = q(xc)
    assert yc.is_contiguous(memory_format=torch.channels_last) and not yc.is_contiguous()
    assert torch.equal(y, yc)
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        yb = q(xc.to(dt))
        assert yb.dtype == dt and yb.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(yb.float(), q(xc.to(dt).float()).to(dt).float())
    # A non-contiguous view gives the same result as its contiguous copy.
    xs = torch.randn(2, 8, 9, 14)[..., ::2]
    assert torch.equal(q(xs), q(xs.contiguous()))


def test_threads_deterministic():
    torch.manual_seed(2)
    conv = nn.Conv2d(16, 32, 3, 1, 1)
    x = torch.randn(2, 16, 12, 12)
    y1 = QuantConv2d.from_float(conv, threads=1)(x)
    y2 = QuantConv2d.from_float(conv, threads=2)(x)
    assert torch.equal(y1, y2)


def test_state_dict_and_pickle_roundtrip():
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 10, 3, 2, 1, groups=2)
    q = QuantConv2d.from_float(conv)
    x = torch.randn(1, 6, 8, 8)
    y = q(x)
    sd = q.state_dict()
    assert set(sd) == {"qweight", "weight_scale", "bias"} and sd["qweight"].dtype == torch.int8
    q2 = QuantConv2d(6, 10, 3, 2, 1, groups=2)
    assert not torch.equal(q2(x), y)
    q2.load_state_dict(sd)
    assert torch.equal(q2(x), y)
    buf = io.BytesIO()
    torch.save(nn.Sequential(q, nn.ReLU()), buf)
    buf.seek(0)
    m = torch.load(buf, weights_only=False)
    assert torch.equal(m(x), torch.relu(y))
    # bfloat16 model cast keeps float32 scales and bias
    assert q2.to(torch.bfloat16).weight_scale.dtype == torch.float32


@pytest.mark.parametrize("groups", [1, 2, 6])  # gemm, grouped gemm, depthwise layouts
def test_only_the_packed_weight_is_kept(groups):
    torch.manual_seed(5)
    conv = nn.Conv2d(6, 6, 3, 1, 1, groups=groups)
    q = QuantConv2d.from_float(conv)
    assert [n for n, _ in q.named_buffers()] == ["weight_scale", "bias", "packed"]
    w = q.qweight  # unpacked from the kernel layout
    assert w.dtype == torch.int8 and w.shape == conv.weight.shape
    want = torch.round(conv.weight.detach() / q.weight_scale.reshape(-1, 1, 1, 1))
    assert torch.equal(w, want.clamp(-128, 127).to(torch.int8))
    assert q.weight_bytes() == q.packed.numel() + 4 * (6 + 6)  # packed + scales + bias
    assert q.weight_bytes(include_packed=False) == w.numel() + 4 * (6 + 6)
    x = torch.randn(1, 6, 5, 5)
    assert torch.equal(copy.deepcopy(q)(x), q(x))


def test_compile_and_export():
    torch.manual_seed(4)
    model = nn.Sequential(QuantConv2d.from_float(nn.Conv2d(4, 8, 3, 1, 1)), nn.ReLU())
    x = torch.randn(2, 4, 6, 6)
    y = model(x)
    ep = torch.export.export(model, (x,))
    assert "int8kit.conv2d_dynamic" in str(ep.graph)
    assert torch.equal(ep.module()(x), y)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.equal(compiled(x), y)
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(compiled(xc), y)


def test_bad_inputs_raise():
    q = QuantConv2d.from_float(nn.Conv2d(4, 8, 3))
    with pytest.raises(ValueError, match="in_channels"):
        q(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[N, 4"):
        q(torch.randn(4, 8, 8))  # 3-D (unbatched) input
    with pytest.raises(TypeError, match="float32"):
        q(torch.zeros(1, 4, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="smaller than"):
        q(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        q(torch.full((1, 4, 5, 5), float("nan")))
    with pytest.raises(NotConvertibleError, match="padding_mode"):
        QuantConv2d.from_float(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding_mode"):
        QuantConv2d(4, 8, 3, padding_mode="circular")
    with pytest.raises(TypeError, match="nn.Conv2d"):
        QuantConv2d.from_float(nn.Linear(4, 4))
    with pytest.raises(NotConvertibleError, match="same"):
        QuantConv2d.from_float(nn.Conv2d(4, 8, 4, padding="same"))
    assert QuantConv2d.from_float(nn.Conv2d(4, 8, 3, padding="same")).padding == (1, 1)


@pytest.mark.parametrize("option", [{"padding": (1,)}, {"stride": (2,)},
                                    {"dilation": (2,), "padding": 2}])
def test_one_element_tuples_as_nn_conv2d_takes_them(option):
    """nn.Conv2d broadcasts stride=(2,) and the like; from_float (and so quantize_dynamic,
    which would have stopped on the error) must too."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, **option).eval()
    x = torch.randn(1, 4, 11, 11)
    q = QuantConv2d.from_float(conv)
    assert q(x).shape == conv(x).shape
    assert torch.allclose(q(x), conv(x), atol=0.05)
    qm = int8kit.quantize_dynamic(nn.Sequential(conv), {nn.Conv2d})
    assert isinstance(qm[0], QuantConv2d)


def test_static_conv_refuses_input_parameters_it_cannot_use():
    """A state dict or an in-place edit can hold an input scale that set_input_qparams
    refuses; 0 would make the kernel measure the range (a dynamic conv), silently."""
    from int8kit.nn.static import StaticQuantConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e-42):
        sd = StaticQuantConv2d.from_float(conv, 0.05, 128).state_dict()
        sd["input_scale"] = torch.tensor([bad])
        m = StaticQuantConv2d.from_float(conv, 0.05, 128)
        m.load_state_dict(sd)
        with pytest.raises(ValueError, match="input_scale"):
            m(x)
        with pytest.raises(ValueError, match="input_scale"):
            m.quantize_input(x)
        with pytest.raises(ValueError, match="input scale|input_scale"):
            m.set_input_qparams(bad, 128)
    m = StaticQuantConv2d.from_float(conv, 0.05, 128)
    m.input_zero_point.fill_(300)
    with pytest.raises(ValueError, match="input_zero_point"):
        m(x)


def test_quantize_dynamic_converts_conv_when_asked():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                          nn.Flatten(), nn.Linear(8 * 25, 4))
    assert isinstance(int8kit.quantize_dynamic(model)[0], nn.Conv2d)  # Linear only by default
    qm = int8kit.quantize_dynamic(model, {nn.Conv2d, nn.Linear})
    assert isinstance(qm[0], QuantConv2d) and isinstance(qm[2], nn.Conv2d)
    report = qm.int8kit_report
    skipped = {r.name: r.detail for r in report.layers if not r.converted}
    assert "padding_mode" in skipped["2"]
    x = torch.randn(2, 3, 5, 5)
    assert (qm(x) - model(x)).abs().max() < 0.1
