"""Static PTQ: prepare / calibrate / convert on nested models, static vs dynamic agreement,
uint8 hand-off == float hand-off, the report, and that the user's model is never modified."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import int8kit
from int8kit.nn import QuantLinear, StaticQuantConv2d, StaticQuantLinear
from int8kit.nn.conv import QuantConv2d
from int8kit.nn.static import STATIC_MODULES
from int8kit.observers import MinMaxObserver
from int8kit.qconfig import QConfig, QuantConfig
from int8kit.static import QuantSequential, calibrate, convert, prepare, quantize_static

MINMAX = QuantConfig(QConfig(activation=MinMaxObserver.with_args()))


class Net(nn.Module):
    """Nested: a Sequential conv stack inside a custom module, a Linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(),
                                  nn.Dropout(0.2), nn.Linear(32, 5))
        self.aux = nn.Linear(5, 2)

    def forward(self, x):
        y = self.head(self.features(x))
        return y, self.aux(y)


def _net():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.features[1].running_mean.normal_(0, 0.3)
        net.features[1].running_var.uniform_(0.5, 2.0)
    return net


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _types(m):
    return [(n, type(c)) for n, c in m.named_modules()]


def test_prepare_calibrate_convert_nested_model():
    net = _net()
    before, types_before = copy.deepcopy(net), _types(net)
    x = torch.randn(64, 3, 16, 16)
    prepared = prepare(net)
    calibrate(prepared, [x[:32], x[32:]], progress=False)
    q = convert(prepared)
    assert _same_state(net, before) and _types(net) == types_before  # user's model untouched
    assert type(q.features) is QuantSequential and type(q.head) is QuantSequential
    assert type(q.features[0]) is StaticQuantConv2d and q.features[0].relu
    assert type(q.features[4]) is StaticQuantConv2d and q.features[4].relu
    assert type(q.head[1]) is StaticQuantLinear and q.head[1].relu
    assert type(q.head[4]) is StaticQuantLinear and not q.head[4].relu
    assert type(q.aux) is StaticQuantLinear
    with torch.no_grad():
        (y, a), (yq, aq) = net(x), q(x)
    assert y.shape == yq.shape and a.shape == aq.shape
    # A few quantization steps of error at most, far below the signal.
    assert (yq - y).abs().max() < 0.05 * y.abs().max() + 1e-3
    assert (aq - a).abs().max() < 0.05 * a.abs().max() + 1e-3


def _bound_linear(x, w_deq, a_scale, w_scale, w):
    """|y_q - y| bound per output: rounding x costs a_scale/2 per term times |w_hat|, rounding
    w costs w_scale/2 per term times |x|; a_scale may be per row."""
    a_scale = torch.as_tensor(a_scale).reshape(-1, 1)
    return 0.5 * a_scale * w_deq.abs().sum(1) + 0.5 * x.abs() @ (w_scale.reshape(-1, 1) *
                                                                 torch.ones_like(w)).T


def test_static_matches_dynamic_within_quantization_bound():
    torch.manual_seed(1)
    lin = nn.Linear(40, 12)
    calib = torch.randn(256, 40)
    x = torch.randn(32, 40) * 0.9  # inside the calibrated range: no clipping
    qs = quantize_static(lin, calib, MINMAX)
    qd = int8kit.quantize_dynamic(nn.Sequential(lin))[0]
    assert isinstance(qd, QuantLinear) and type(qs) is StaticQuantLinear
    with torch.no_grad():
        y, ys, yd = lin(x), qs(x), qd(x)
    torch.testing.assert_close(qs.qweight, qd.qweight, rtol=0, atol=0)  # same weights
    w_deq = qs.dequantize_weight()
    s_static = float(qs.input_scale)
    s_dyn = (torch.maximum(x.amax(1), torch.zeros(1)) - torch.minimum(x.amin(1), torch.zeros(1))) / 255
    bound_s = _bound_linear(x, w_deq, s_static, qs.weight_scale, lin.weight)
    bound_d = _bound_linear(x, w_deq, s_dyn, qs.weight_scale, lin.weight)
    assert ((ys - y).abs() <= bound_s + 1e-5).all()
    assert ((yd - y).abs() <= bound_d + 1e-5).all()
    assert ((ys - yd).abs() <= bound_s + bound_d + 1e-5).all()


def test_static_equals_dynamic_when_calibrated_on_the_same_batch():
    # MinMax static parameters from batch x are the dynamic per-tensor parameters of x.
    torch.manual_seed(2)
    lin, conv = nn.Linear(24, 7), nn.Conv2d(3, 5, 3, padding=1)
    x, xc = torch.randn(16, 24), torch.randn(4, 3, 9, 9)
    ys, yd = quantize_static(lin, x, MINMAX)(x), QuantLinear.from_float(lin, activation="per_tensor")(x)
    torch.testing.assert_close(ys, yd, rtol=0, atol=1e-6)
    ys, yd = quantize_static(conv, xc, MINMAX)(xc), QuantConv2d.from_float(conv)(xc)
    torch.testing.assert_close(ys, yd, rtol=0, atol=1e-6)


def test_uint8_handoff_equals_float_handoff():
    net = _net()
    x = torch.randn(32, 3, 16, 16)
    prepared = prepare(net)
    calibrate(prepared, x, progress=False)
    chained, plain = convert(prepared), convert(prepared, handoff=False)
    assert type(chained.features) is QuantSequential and type(plain.features) is nn.Sequential
    xt = torch.randn(8, 3, 16, 16) * 1.5  # beyond the calibrated range too: clipping
    with torch.no_grad():
        (y1, a1), (y2, a2) = chained(xt), plain(xt)
    assert torch.equal(y1, y2) and torch.equal(a1, a2)
    notes = " ".join(chained.int8kit_report.notes)
    assert "0 -> 4" in notes and "1 -> 4" in notes


def test_handoff_through_separate_relu_and_maxpool_with_padding():
    # ReLU kept as its own module (no fusion) and an asymmetric input range (zp > 0).
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.MaxPool2d(3, 2, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.Linear(6, 3))
    calib = torch.randn(16, 2, 8, 8)
    prepared = prepare(model, MINMAX, fuse=False)
    calibrate(prepared, calib, progress=False)
    chained, plain = convert(prepared), convert(prepared, handoff=False)
    assert type(chained) is QuantSequential
    assert int(chained[3].input_zero_point) == 0 and int(chained[5].input_zero_point) > 0
    x = torch.randn(5, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(chained(x), plain(x))


def test_report_lists_converted_skipped_and_ranges():
    net = _net()
    cfg = QuantConfig().set_module_name("aux", None)
    prepared = prepare(net, cfg)
    with torch.no_grad():  # only the features see data: the head layers never run
        prepared.features(torch.randn(8, 3, 16, 16))
    q = convert(prepared)
    rows = {r.name: r for r in q.int8kit_report.layers}
    assert rows["features.0"].converted and rows["features.4"].converted
    lo, hi = rows["features.4"].input_range
    assert lo == 0.0 and hi > 0.0  # after ReLU + max-pool: non-negative
    assert rows["features.0"].input_range[0] < 0
    assert not rows["aux"].converted and "qconfig is None" in rows["aux"].detail
    assert not rows["head.1"].converted and "never ran" in rows["head.1"].detail
    assert type(q.aux) is nn.Linear and type(q.head[4]) is nn.Linear
    assert not hasattr(q.head[4], "int8kit_input_observer") and not q.head[4]._forward_pre_hooks
    text = str(q.int8kit_report)
    assert "features.0" in text and "skipped" in text
    with pytest.raises(int8kit.nn.NotConvertibleError, match="head.1"):
        convert(prepared, strict=True)


def test_nan_in_calibration_names_the_layer_and_prepared_survives():
    net = _net()
    prepared = prepare(net)
    x = torch.randn(4, 3, 16, 16)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="features.0.*NaN or Inf"):
        calibrate(prepared, x, progress=False)


def test_failed_convert_leaves_prepared_untouched():
    net = _net()
    prepared = prepare(net)
    types_before = _types(prepared)
    with pytest.raises(int8kit.nn.NotConvertibleError):
        convert(prepared, strict=True)  # nothing calibrated
    assert _types(prepared) == types_before
    assert all(hasattr(prepared.get_submodule(n), "int8kit_input_observer")
               for n in ("features.0", "features.4", "head.1", "head.4", "aux"))


def test_state_dict_round_trip_keeps_calibration():
    net = _net()
    x = torch.randn(16, 3, 16, 16)
    q = quantize_static(net, x)
    sd = q.state_dict()
    assert "features.0.input_scale" in sd and "head.4.input_zero_point" in sd
    fresh = quantize_static(_net(), torch.randn(16, 3, 16, 16) * 3)  # other ranges
    fresh.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], q(x)[0])


def test_calibrate_accepts_loaders_and_checks_input():
    lin = nn.Sequential(nn.Linear(4, 4))
    prepared = prepare(lin)
    ds = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.zeros(40))
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    calibrate(prepared, loader, progress=True, max_batches=3)
    assert prepared[0].int8kit_input_observer.batches == 3
    with pytest.raises(ValueError, match="empty"):
        calibrate(prepared, [], progress=False)
    with pytest.raises(TypeError, match="int8kit.prepare"):
        calibrate(lin, loader)
    with pytest.raises(TypeError, match="int8kit.prepare"):
        convert(lin)
    with pytest.raises(TypeError, match="config"):
        prepare(lin, {"activation": "minmax"})
    with pytest.raises(ValueError, match="no module named"):
        prepare(lin, QuantConfig().set_module_name("fc", None))


def test_static_module_input_errors():
    q = quantize_static(nn.Linear(4, 3), torch.randn(8, 4))
    with pytest.raises(ValueError, match="in_features"):
        q(torch.randn(2, 5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        q(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(TypeError, match="float32"):
        q(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="zero_point"):
        q.set_input_qparams(0.1, 300)
    assert q(torch.randn(2, 3, 4)).shape == (2, 3, 3)  # leading dims kept


def test_per_tensor_weights_and_type_config():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    cfg = QuantConfig().set_module_type(
        nn.Conv2d, QConfig(weight=MinMaxObserver.with_args(symmetric=True, signed=True)))
    q = quantize_static(model, torch.randn(8, 1, 6, 6), cfg)
    assert q[0].weight_scale.numel() == 1 and q[3].weight_scale.numel() == 3
    assert isinstance(q[0], STATIC_MODULES)


def test_input_params_follow_every_update_of_the_buffers():
    # forward paths read the input scale and zero point from a cache keyed on the buffers'
    # identity and version: set_input_qparams, load_state_dict and in-place edits all show.
    m = StaticQuantLinear.from_float(nn.Linear(4, 3), 0.1, 7)
    assert m.input_params() == (pytest.approx(0.1), 7)
    m.set_input_qparams(0.5, 200)
    assert m.input_params() == (0.5, 200)
    sd = m.state_dict()
    sd["input_scale"], sd["input_zero_point"] = torch.tensor([0.25]), torch.tensor([9])
    m.load_state_dict(sd)
    assert m.input_params() == (0.25, 9)
    with torch.no_grad():
        m.input_scale.mul_(2)
    assert m.input_params() == (0.5, 9)
    x = torch.randn(2, 4)
    assert torch.equal(m.quantize_input(x),
                       torch.quantize_per_tensor(x, 0.5, 9, torch.quint8).int_repr())


@pytest.mark.parametrize("groups, stride, batch", [(1, 1, 2), (4, 2, 1), (8, 1, 3), (1, 1, 0)])
def test_static_conv_op_equals_the_conv_kernels(groups, stride, batch):
    # forward_quantized (one native call) against conv_ops on the same packed weight, for
    # channels_last and NCHW-contiguous uint8 input, float and requantized uint8 output
    from int8kit import conv_ops
    torch.manual_seed(5)
    conv = nn.Conv2d(8, 16, 3, stride=stride, padding=1, groups=groups)
    sq = StaticQuantConv2d.from_float(conv, torch.tensor([0.04]), torch.tensor([11]), relu=True)
    q = torch.randint(0, 256, (batch, 8, 9, 7), dtype=torch.uint8)
    nhwc = q.permute(0, 2, 3, 1).contiguous()
    args = (nhwc, 11, 0.04, sq.packed, sq.weight_scale)
    want_f = conv_ops.conv2d_f32(*args, sq.bias, relu=True)
    want_u = conv_ops.conv2d_u8(*args, 0.1, 3, sq.bias, relu=True)
    for x in (q, q.contiguous(memory_format=torch.channels_last)):
        got_f, got_u = sq.forward_quantized(x), sq.forward_quantized(x, out=(0.1, 3))
        assert got_f.dtype == torch.float32 and got_u.dtype == torch.uint8
        assert torch.equal(got_f.permute(0, 2, 3, 1), want_f)
        assert torch.equal(got_u.permute(0, 2, 3, 1), want_u)
        assert got_f.is_contiguous(memory_format=torch.channels_last)
    strided = torch.randint(0, 256, (batch, 8, 9, 14), dtype=torch.uint8)[..., ::2]  # copied
    assert torch.equal(sq.forward_quantized(strided), sq.forward_quantized(strided.contiguous()))
    with pytest.raises(ValueError, match="q must be a dense CPU tensor"):
        sq.forward_quantized(q.to_sparse())
    with pytest.raises(ValueError, match="q must be a uint8 tensor"):
        sq.forward_quantized(q.numpy())
    with pytest.raises(ValueError, match="in_channels"):
        sq.forward_quantized(q.reshape(-1, 9, 7))
    # out=(scale, zero point) that no uint8 output can have: never rounded or clamped
    for bad in ((0.1, 3.5), (0.1, 256), (-1.0, 3), (float("nan"), 3), (1e-45, 3), (1e39, 3)):
        with pytest.raises((TypeError, ValueError), match="out_"):
            sq.forward_quantized(q, out=bad)
    # ... or that is not a single number: each error names the part of out= at fault
    for bad, name in (((None, 3), "out_scale must be a number"),
                      ((np.array([0.1, 0.2]), 3), "out_scale must be a single value"),
                      (([0.1], 3), "out_scale must be a number"), (("0.1", 3), "out_scale"),
                      ((0.1, np.array([1, 2])), "out_zero_point must be a single value"),
                      ((0.1, [3, 4]), "out_zero_point must be a single value"),
                      ((0.1, True), "out_zero_point must be a number"),
                      ((0.1,), "out must be a pair"), (0.1, "out must be a pair")):
        with pytest.raises((TypeError, ValueError), match=name):
            sq.forward_quantized(q, out=bad)
    want = sq.forward_quantized(q, out=(0.1, 3))
    for same in ((np.float32(0.1), np.int64(3)), (torch.tensor([0.1]), torch.tensor(3)),
                 (np.array([0.1]), 3.0), [0.1, 3], (0.1, [3])):
        assert torch.equal(sq.forward_quantized(q, out=same), want)
    with pytest.raises(ValueError, match="height and width must be >= 1"):
        sq.forward_quantized(torch.zeros(1, 8, 1, 0, dtype=torch.uint8))
    with pytest.raises(ValueError, match="in_channels"):
        sq.forward_quantized(torch.zeros(1, 7, 9, 9, dtype=torch.uint8))


@pytest.mark.parametrize("cfg", [
    dict(c=8, oc=16, k=3, stride=1, padding=1, groups=1),   # implicit GEMM on padded input
    dict(c=8, oc=16, k=1, stride=2, padding=0, groups=1),   # strided 1x1: compact input
    dict(c=6, oc=9, k=3, stride=2, padding=0, groups=3),    # grouped, no padding
    dict(c=32, oc=32, k=3, stride=1, padding=1, groups=32),  # depthwise, banded quantize
    dict(c=24, oc=24, k=3, stride=2, padding=1, groups=24),  # depthwise stride 2
])
@pytest.mark.parametrize("threads", [1, 2])
def test_static_conv_float_forward_equals_its_two_halves(path, cfg, threads):
    # Eager forward is one native call (quantize with the calibrated parameters fused with
    # the layout change, conv, output layout); it must equal quantize_input followed by
    # forward_quantized bit for bit, keep the input's memory format, and fail like them.
    torch.manual_seed(6)
    conv = nn.Conv2d(cfg["c"], cfg["oc"], cfg["k"], cfg["stride"], cfg["padding"],
                     groups=cfg["groups"])
    sq = StaticQuantConv2d.from_float(conv, torch.tensor([0.03]), torch.tensor([120]), relu=True)
    sq.threads = threads
    x = torch.randn(3, cfg["c"], 11, 10) * 2  # beyond the calibrated range: clipping
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        want = sq.forward_quantized(sq.quantize_input(xx))
        got = sq(xx)
        cl = xx.is_contiguous(memory_format=torch.channels_last)
        assert got.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        assert torch.equal(got, want)
        # forward_float with out=: the float input to the uint8 output, one call
        want_u = sq.forward_quantized(sq.quantize_input(xx), out=(0.05, 9))
        got_u = sq.forward_float(xx, (0.05, 9))
        assert got_u.dtype == torch.uint8 and got_u.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got_u, want_u)
        got16 = sq(xx.to(torch.bfloat16))
        assert got16.dtype == torch.bfloat16
        assert torch.equal(got16, sq.forward_quantized(sq.quantize_input(xx.to(torch.bfloat16)))
                           .to(torch.bfloat16))
    assert sq(x[:0]).shape == (0, cfg["oc"], *want.shape[2:])
    bad = x.clone()
    bad[1, 0, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sq(bad)
    with pytest.raises(ValueError, match="in_channels"):
        sq(torch.randn(1, cfg["c"] + 1, 11, 10))
    with pytest.raises(ValueError, match="out_scale|out_zero_point"):
        sq.forward_float(x, (0.0, 9))
    with pytest.raises(ValueError, match="out_scale|out_zero_point"):
        sq.forward_float(x, (0.05, 256))
    assert sq.forward_float(x[:0], (0.05, 9)).shape == (0, cfg["oc"], *want.shape[2:])


def test_depthwise_bands_split_a_tall_image(path):
    # 112 rows of 64 channels x 112 pixels: the quantize-then-convolve bands (about 256 KB
    # of uint8 input each) split every image, on one thread and two, bit for bit.
    torch.manual_seed(7)
    conv = nn.Conv2d(64, 64, 3, padding=1, groups=64)
    sq = StaticQuantConv2d.from_float(conv, torch.tensor([0.02]), torch.tensor([128]))
    x = torch.randn(2, 64, 112, 112).contiguous(memory_format=torch.channels_last)
    want = sq.forward_quantized(sq.quantize_input(x))
    for t in (1, 2):
        sq.threads = t
        assert torch.equal(sq(x), want)


def test_fixed_input_parameters_are_checked_in_the_kernel():
    from int8kit.nn._conv_op import conv2d_dynamic_np, nchw_numpy
    sq = StaticQuantConv2d.from_float(nn.Conv2d(2, 3, 1), torch.tensor([0.1]), torch.tensor([5]))
    xa, nhwc = nchw_numpy(torch.randn(1, 2, 4, 4))
    w, ws, b = sq._kernel_views()[:3]
    for bad in ((float("inf"), 5), (0.1, 256), (0.1, -1)):
        with pytest.raises(ValueError, match="fixed input parameters"):
            conv2d_dynamic_np(xa, nhwc, w, ws, b, sq._params, False, 1, nhwc, x_qparams=bad)
    from int8kit import _C
    y = np.empty((1, 3, 4, 4), np.uint8)  # a uint8 output must be NHWC
    with pytest.raises(ValueError, match="NHWC"):
        _C.conv2d_dynamic_f32(xa, nhwc, w, ws, b, False, y, False, 1, "", 0.1, 5, 10.0, 3)


def test_handoff_plan_follows_dropout_mode_and_skips_identity():
    # Dropout links two static layers only in eval mode; the cached plan must follow a
    # switch to train() (no uint8 hand-off through an active dropout) and back.
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Dropout(0.5), nn.Identity(),
                          nn.Conv2d(4, 3, 1)).eval()
    calib = torch.randn(8, 2, 6, 6)
    prepared = prepare(model, MINMAX, fuse=False)
    calibrate(prepared, calib, progress=False)
    chained, plain = convert(prepared), convert(prepared, handoff=False)
    assert type(chained) is QuantSequential
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        want = plain(x)
        assert torch.equal(chained(x), want)
        chained.train()
        torch.manual_seed(0)
        y_train = chained(x)
        plain.train()
        torch.manual_seed(0)
        assert torch.equal(y_train, plain(x))  # the float path, dropout active
        chained.eval()
        assert torch.equal(chained(x), want)



def _chain_model():
    """(float model, its static QuantSequential, an input): conv -> relu -> max-pool ->
    flatten -> linear -> linear, so the plan holds uint8 ops (closures) between layers."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 3 * 3, 8), nn.Linear(8, 3)).eval()
    q = quantize_static(model, torch.randn(16, 2, 6, 6), MINMAX, fuse=False)
    assert type(q) is QuantSequential
    return model, q, torch.randn(5, 2, 6, 6)


def _by_hand(q, x):
    """q's children one after another, each through __call__ (its hooks included)."""
    for m in q:
        x = m(x)
    return x


def test_whole_model_saves_and_copies_after_forward_and_compare():
    import io
    model, q, x = _chain_model()
    with torch.no_grad():
        want = q(x)
    assert "_plan_cache" in q.__dict__  # the closures that pickle could not take
    for step in ("forward", "compare"):
        if step == "compare":
            int8kit.compare(model, q, x, batch_sizes=(1,), latency_repeats=1,
                            measure_memory=False)
        buf = io.BytesIO()
        torch.save(q, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for twin in (loaded, copy.deepcopy(q)):
            assert type(twin) is QuantSequential and "_plan_cache" not in twin.__dict__
            with torch.no_grad():
                assert torch.equal(twin(x), want)
            assert "_plan_cache" in twin.__dict__  # rebuilt: the uint8 hand-off runs
    with torch.no_grad():
        assert torch.equal(q(x), want)


def test_float_model_hooks_survive_quantize_static_and_fire_once_per_call():
    torch.manual_seed(9)
    inner = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), inner).eval()
    seen = []
    model[0].register_forward_hook(lambda m, a, out: seen.append(("0", out)))
    inner.register_forward_hook(lambda m, a, out: seen.append(("2", out)))
    inner[0].register_forward_pre_hook(lambda m, a: seen.append(("2.0 pre", a[0])))
    inner[2].register_forward_hook(lambda m, a, kw, out: seen.append(("2.2", out)),
                                   with_kwargs=True)
    inner[1].register_forward_hook(lambda *a: seen.append(("2.1", None)))  # fused away
    model[0].register_full_backward_hook(lambda *a: None)
    q = quantize_static(model, torch.randn(32, 8))
    assert type(q[2]) is QuantSequential and type(q[2][0]) is StaticQuantLinear
    x = torch.randn(3, 8)
    with torch.no_grad():
        h0 = q[0](x)
        h2 = q[2][2](q[2][0](q[1](h0)))
        seen.clear()
        y = q(x)
        assert [k for k, _ in seen] == ["0", "2.0 pre", "2.2", "2"]
        q(x)
    assert len(seen) == 8  # once per call each
    for key, want in (("0", h0), ("2.0 pre", q[1](h0)), ("2.2", h2), ("2", y)):
        assert torch.equal(dict(seen[:4])[key], want)
    assert torch.equal(y, h2)
    notes = "\n".join(q.int8kit_report.notes)
    assert "forward hooks and pre-hooks kept on 0, 2.0, 2.2" in notes
    assert "backward and state_dict hooks not kept (as in quantize_dynamic) on 0" in notes
    assert not q[0]._backward_hooks
    assert "fused-away modules dropped: 2.1" in notes
    assert "run one by one" in notes


def test_hooks_registered_after_conversion_fire_with_the_float_values():
    _, q, x = _chain_model()
    with torch.no_grad():
        fast = q(x)
        want, h = [], x
        for m in q:
            h = m(h)
            want.append(h)
    seen = {}
    handles = [m.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, []).append(out))
               for i, m in enumerate(q)]
    with torch.no_grad():
        y = q(x)
    assert torch.equal(y, fast)  # the same bits as the uint8 hand-off
    assert sorted(seen) == list(range(len(q))) and all(len(v) == 1 for v in seen.values())
    assert all(torch.equal(seen[i][0], want[i]) for i in range(len(q)))
    for hd in handles:
        hd.remove()
    # torch's global hooks reach every child too
    from torch.nn.modules.module import register_module_forward_hook
    called = []
    handle = register_module_forward_hook(lambda m, a, out: called.append(m))
    try:
        with torch.no_grad():
            assert torch.equal(q(x), fast)
    finally:
        handle.remove()
    assert [id(m) for m in called] == [id(m) for m in q] + [id(q)]


def test_pre_hook_that_changes_the_input_is_honoured():
    _, q, x = _chain_model()
    with torch.no_grad():
        plain = q(x)
        q[4].register_forward_pre_hook(lambda m, a: (a[0] * 0.5,))
        want = _by_hand(q, x)
        got = q(x)
    assert not torch.equal(want, plain)  # the hook matters
    assert torch.equal(got, want)


def test_model_without_hooks_takes_the_uint8_handoff():
    _, q, x = _chain_model()
    calls = []

    def spy(forward):
        return lambda *a: calls.append(forward) or forward(*a)

    for m in q:
        if isinstance(m, STATIC_MODULES):  # forward() runs only when called one by one
            m.forward = spy(m.forward)
    with torch.no_grad():
        fast = q(x)
        assert calls == []
        steps = q.__dict__["_plan_cache"][1]
        assert [s[0] for s in steps] == ["static", "u8", "u8", "u8", "static", "static"]
        assert [s[3] for s in steps if s[0] == "static"] == [False, True, True]
        handle = q[1].register_forward_pre_hook(lambda m, a: None)
        assert torch.equal(q(x), fast) and len(calls) == 3
        handle.remove()
        assert torch.equal(q(x), fast) and len(calls) == 3  # back on the fast path


def test_default_config_quantizes_a_layer_after_sigmoid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2)).eval()
    q = quantize_static(model, torch.randn(64, 4))  # default: MSEObserver
    rows = {r.name: r for r in q.int8kit_report.layers}
    assert rows["2"].converted and rows["2"].input_range[0] == 0.0  # all-positive input


def test_quantized_or_loaded_under_inference_mode_runs_and_follows_edits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(16, 8)
    ref = quantize_static(model, x)
    with torch.inference_mode():
        q = quantize_static(model, x)
    assert q[2].input_scale.is_inference()
    with torch.no_grad():
        assert torch.equal(q(x), ref(x))
    with torch.inference_mode():
        before = q(x)
        assert torch.equal(before, ref(x))
        q[2].input_scale.mul_(2)  # an in-place edit of an inference tensor
        out = q(x)
    with torch.no_grad():
        ref[2].input_scale.mul_(2)
        assert torch.equal(out, ref(x)) and not torch.equal(out, before)


def test_prepare_model_reusing_one_module_in_a_sequential():
    torch.manual_seed(0)
    relu = nn.ReLU(inplace=True)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), relu, nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8), relu).eval()
    x = torch.randn(4, 3, 8, 8)
    q = quantize_static(model, x, MINMAX)
    assert [r.converted for r in q.int8kit_report.layers] == [True, True]
    prepared = prepare(model, QuantConfig().set_module_name("5", None))  # an alias's name
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), rtol=1e-4, atol=1e-4)


def test_prepared_state_dict_loads_into_a_fresh_prepare():
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))

    torch.manual_seed(1)
    prepared = calibrate(prepare(net()), [torch.randn(32, 8) for _ in range(2)], progress=False)
    fresh = prepare(net())
    fresh.load_state_dict(prepared.state_dict())
    assert fresh[0].int8kit_input_observer.batches == 2
    x = torch.randn(8, 8)
    with torch.no_grad():
        assert torch.equal(convert(fresh)(x), convert(prepared)(x))


def test_input_range_too_wide_skips_only_that_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1e38)
        model[0].bias.zero_()
    prepared = calibrate(prepare(model, MINMAX), torch.tensor([[3.0, 0, 0, 0], [-3.0, 0, 0, 0]]),
                         progress=False)
    types_before = _types(prepared)
    q = convert(prepared)
    rows = {r.name: r for r in q.int8kit_report.layers}
    assert rows["0"].converted and not rows["1"].converted
    assert "input range" in rows["1"].detail and "too wide" in rows["1"].detail
    assert type(q[1]) is nn.Linear
    with pytest.raises(int8kit.nn.NotConvertibleError, match="cannot convert 1: input range"):
        convert(prepared, strict=True)
    assert _types(prepared) == types_before
    assert hasattr(prepared[1], "int8kit_input_observer")


class _MoE(nn.Module):
    """Routes each row to one expert: an expert may get no rows at all."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(4, 2)
        self.experts = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, x):
        route, out = self.gate(x).argmax(-1), torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            out[route == i] = expert(x[route == i])
        return out


def test_calibration_skips_empty_tensors_inside_the_model():
    torch.manual_seed(0)
    moe = _MoE().eval()
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.bias.copy_(torch.tensor([1.0, -1.0]))  # every row goes to expert 0
    prepared = calibrate(prepare(moe, MINMAX), torch.randn(8, 4), progress=False)
    assert prepared.experts[0].int8kit_input_observer.batches == 1
    assert not prepared.experts[1].int8kit_input_observer.calibrated
    rows = {r.name: r for r in convert(prepared).int8kit_report.layers}
    assert rows["experts.0"].converted and not rows["experts.1"].converted
    with pytest.raises(ValueError, match="batch 1 is empty"):
        calibrate(prepared, [torch.randn(2, 4), torch.empty(0, 4)], progress=False)


def test_layer_called_with_keyword_input():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.conv(input=self.fc(input=x).reshape(-1, 1, 2, 2))

    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(8, 4)
    q = quantize_static(net, x, MINMAX)
    assert all(r.converted for r in q.int8kit_report.layers)
    with torch.no_grad():
        torch.testing.assert_close(q(x), net(x), rtol=0, atol=0.05)


def test_nan_weight_is_reported_as_the_weight():
    prepared = calibrate(prepare(nn.Sequential(nn.Linear(4, 4)).eval()), torch.randn(8, 4),
                         progress=False)
    with torch.no_grad():
        prepared[0].weight[0, 0] = float("nan")
    row = convert(prepared).int8kit_report.layers[0]
    assert not row.converted and row.detail == "weight contains NaN or Inf"


def test_from_float_takes_weight_qparams_as_numbers():
    torch.manual_seed(0)
    lin, x = nn.Linear(4, 3), torch.randn(5, 4)
    a = StaticQuantLinear.from_float(lin, 0.1, 3, weight_qparams=(0.05, 0))
    b = StaticQuantLinear.from_float(lin, 0.1, 3, weight_qparams=(torch.tensor([0.05]),
                                                                   torch.tensor([0])))
    assert a.weight_scheme == "per_tensor" and torch.equal(a(x), b(x))
    conv = StaticQuantConv2d.from_float(nn.Conv2d(2, 3, 1), 0.1, 3, weight_qparams=[0.05, 0])
    assert conv.weight_scheme == "per_tensor"
    with pytest.raises(TypeError, match="weight_qparams"):
        StaticQuantLinear.from_float(lin, 0.1, 3, weight_qparams=0.05)
    with pytest.raises(ValueError, match="weight_qparams scale"):
        StaticQuantLinear.from_float(lin, 0.1, 3, weight_qparams=(-1.0, 0))


def test_linear_bn1d_is_folded_and_converted_for_2d_input_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8),
                          nn.BatchNorm1d(8)).eval()
    x = torch.randn(32, 8)
    q = quantize_static(model, x, MINMAX)
    assert [r.converted for r in q.int8kit_report.layers] == [True, True]
    with torch.no_grad():
        torch.testing.assert_close(q(x), model(x), rtol=0, atol=0.1)
    x3 = torch.randn(4, 8, 8)  # BatchNorm1d normalizes dim 1 here: the fold would be wrong
    with pytest.raises(ValueError, match="BatchNorm1d.*fuse=False"):
        quantize_static(model, x3)
    q3 = quantize_static(model, x3, MINMAX, fuse=False)
    with torch.no_grad():
        torch.testing.assert_close(q3(x3), model(x3), rtol=0, atol=0.1)
