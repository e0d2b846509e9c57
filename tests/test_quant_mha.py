"""QuantMultiheadAttention against float nn.MultiheadAttention, and quantize_dynamic of
Transformer layers (every attention projection in int8)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import int8kit
from int8kit.nn import NotConvertibleError, QuantLinear, QuantMultiheadAttention

E, H = 32, 4


def _x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mha(seed=0, **kw):
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(E, H, **kw).eval()
    if m.in_proj_bias is not None:  # torch initializes biases to 0: make them matter
        with torch.no_grad():
            m.in_proj_bias.normal_(0, 0.1)
            m.out_proj.bias.normal_(0, 0.1)
    return m


def _assert_close(ref, got, what="output"):
    """Two int8 projections chain on every path (v then out; q, k then softmax), each
    within about half a quantization step of its operands: 1/254 of a weight row's range
    and 1/510 of an activation row's range, about 1% of the output's scale at worst. The
    bounds (cosine 0.999, max error 3% of the output's range) leave a margin over what
    these tests observe (cosine >= 0.99995, max error <= 0.95% of the range) and still
    fail for any real bug (a wrong mask, head order or scale moves whole rows)."""
    ref, got = ref.detach().float(), got.detach().float()
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    if ref.numel() == 0:
        return
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(got)), what
    if not finite.any():  # every row fully masked: NaN in both
        return
    ref, got = ref[finite], got[finite]
    cos = float(F.cosine_similarity(ref.double(), got.double(), 0))
    assert cos >= 0.999, (what, cos)
    err, span = float((ref - got).abs().max()), float(ref.max() - ref.min())
    assert err <= 0.03 * span, (what, err, span)


def _both(m, q, *args, **kw):
    """Runs the float and the quantized module; checks output and weights."""
    ref, ref_w = m(*args, **kw)
    got, got_w = q(*args, **kw)
    _assert_close(ref, got)
    assert (ref_w is None) == (got_w is None)
    if ref_w is not None:
        _assert_close(ref_w, got_w, "attention weights")
    return got, got_w


# ------------------------------------------------------------------ against float MHA


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
def test_self_attention_matches_float(batch_first, bias, need_weights, average):
    m = _mha(bias=bias, batch_first=batch_first)
    q = QuantMultiheadAttention.from_float(m)
    x = _x(3, 7, E) if batch_first else _x(7, 3, E)
    out, w = _both(m, q, x, x, x, need_weights=need_weights, average_attn_weights=average)
    assert out.shape == x.shape
    if need_weights:
        assert w.shape == ((3, 7, 7) if average else (3, H, 7, 7))
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))  # a softmax


@pytest.mark.parametrize("need_weights", [False, True])
def test_unbatched_input(need_weights):
    m = _mha(batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    x, kv = _x(6, E), _x(9, E, seed=2)
    kpm = torch.zeros(9, dtype=torch.bool)
    kpm[7:] = True
    out, w = _both(m, q, x, kv, kv, key_padding_mask=kpm, need_weights=need_weights)
    assert out.shape == (6, E)
    if need_weights:
        assert w.shape == (6, 9) and torch.all(w[:, 7:] == 0)
    # the same as a batch of one
    out1, _ = q(x[None], kv[None], kv[None], key_padding_mask=kpm[None], need_weights=False)
    torch.testing.assert_close(out, out1[0])


@pytest.mark.parametrize("batch_first", [True, False])
def test_cross_attention_with_other_kdim_vdim(batch_first):
    m = _mha(kdim=16, vdim=24, batch_first=batch_first)
    assert not m._qkv_same_embed_dim
    q = QuantMultiheadAttention.from_float(m)
    assert not q._qkv_same_embed_dim and (q.k_proj.in_features, q.v_proj.in_features) == (16, 24)
    lay = (lambda b, s, d, seed: _x(b, s, d, seed=seed)) if batch_first else \
        (lambda b, s, d, seed: _x(s, b, d, seed=seed))
    x, k, v = lay(2, 5, E, 1), lay(2, 8, 16, 2), lay(2, 8, 24, 3)
    kpm = torch.zeros(2, 8, dtype=torch.bool)
    kpm[0, 6:] = True
    for nw in (False, True):
        _both(m, q, x, k, v, key_padding_mask=kpm, need_weights=nw, average_attn_weights=False)


def test_cross_attention_same_dims_query_is_not_key():
    m = _mha(batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    x, mem = _x(2, 4, E), _x(2, 11, E, seed=5)
    out, w = _both(m, q, x, mem, mem)
    assert out.shape == (2, 4, E) and w.shape == (2, 4, 11)


def _masks(kind, tgt, src, bsz):
    g = torch.Generator().manual_seed(7)
    if kind == "bool2d":
        return torch.rand(tgt, src, generator=g) < 0.3
    if kind == "bool3d":
        return torch.rand(bsz * H, tgt, src, generator=g) < 0.3
    if kind == "float2d":
        return torch.randn(tgt, src, generator=g)
    return torch.randn(bsz * H, tgt, src, generator=g)  # float3d


@pytest.mark.parametrize("kind", ["bool2d", "bool3d", "float2d", "float3d"])
@pytest.mark.parametrize("with_kpm", [False, True])
def test_attn_mask_and_key_padding_mask(kind, with_kpm):
    m = _mha(batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    x, kv = _x(2, 5, E), _x(2, 6, E, seed=3)
    mask = _masks(kind, 5, 6, 2)
    if mask.dtype == torch.bool:
        mask[..., 0] = False  # no fully masked row (softmax of all -inf is NaN in both)
    kpm = None
    if with_kpm:
        kpm = torch.zeros(2, 6, dtype=mask.dtype)  # same type as attn_mask: no torch warning
        if mask.dtype == torch.bool:
            kpm[1, 4:] = True
        else:
            kpm[1, 4:] = float("-inf")
    for nw in (False, True):
        _, w = _both(m, q, x, kv, kv, attn_mask=mask, key_padding_mask=kpm, need_weights=nw,
                     average_attn_weights=False)
        if nw and mask.dtype == torch.bool:
            masked = mask.view(2, H, 5, 6) if mask.dim() == 3 else mask
            assert torch.all(w.masked_select(masked.expand_as(w)) == 0)  # masked: weight 0
        if nw and with_kpm:
            assert torch.all(w[1, ..., 4:] == 0)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("with_kpm", [False, True])
def test_is_causal_with_causal_mask(need_weights, with_kpm):
    m = _mha(batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    x = _x(2, 6, E)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    kpm = None
    if with_kpm:
        kpm = torch.zeros(2, 6)
        kpm[1, 5] = float("-inf")
    out, w = _both(m, q, x, x, x, attn_mask=causal, is_causal=True, key_padding_mask=kpm,
                   need_weights=need_weights)
    # is_causal is a hint: the result is the causal mask's
    plain, _ = q(x, x, x, attn_mask=causal, key_padding_mask=kpm, need_weights=need_weights)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    if need_weights:
        assert torch.all(w.triu(1) == 0)
    with pytest.raises(ValueError, match="attn_mask"):
        q(x, x, x, is_causal=True)


@pytest.mark.parametrize("add_bias_kv,add_zero_attn", [(True, False), (False, True), (True, True)])
def test_add_bias_kv_and_add_zero_attn(add_bias_kv, add_zero_attn):
    m = _mha(add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, batch_first=True)
    if add_bias_kv:
        with torch.no_grad():
            m.bias_k.normal_()
            m.bias_v.normal_()
    q = QuantMultiheadAttention.from_float(m)
    assert (q.bias_k is not None) == add_bias_kv and q.add_zero_attn == add_zero_attn
    if add_bias_kv:
        assert q.bias_k.dtype == torch.float32 and torch.equal(q.bias_k, m.bias_k.detach())
    x = _x(2, 5, E)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, 3:] = True
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[0, 1:] = True
    for nw in (False, True):
        _, w = _both(m, q, x, x, x, key_padding_mask=kpm, attn_mask=mask, need_weights=nw)
        if nw:
            assert w.shape == (2, 5, 5 + add_bias_kv + add_zero_attn)


def test_empty_batch():
    m = _mha(batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    x = _x(0, 4, E)
    for nw in (False, True):
        out, w = q(x, x, x, need_weights=nw)
        assert out.shape == (0, 4, E)
        assert w is None if not nw else w.shape == (0, 4, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_input(dtype):
    m = _mha(batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    x = _x(2, 5, E).to(dtype)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[1, 3:] = True
    for nw in (False, True):
        out, w = q(x, x, x, key_padding_mask=kpm, need_weights=nw)
        assert out.dtype == dtype and (w is None or w.dtype == dtype)
        with torch.no_grad():
            ref, _ = m(x.float(), x.float(), x.float(), key_padding_mask=kpm, need_weights=nw)
        # bfloat16 keeps 8 bits of mantissa: a looser cosine, still far from any bug
        cos = float(F.cosine_similarity(ref.flatten().double(), out.flatten().double(), 0))
        assert cos >= 0.995, cos


def test_dropout_only_in_training():
    m = _mha(dropout=0.5, batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    x = _x(2, 6, E)
    _both(m, q, x, x, x)  # eval: no dropout, matches float
    q.train()
    torch.manual_seed(0)
    train_out = q(x, x, x, need_weights=False)[0]
    _, w = q(x, x, x, average_attn_weights=False)
    assert not torch.allclose(train_out, q.eval()(x, x, x, need_weights=False)[0])
    assert torch.any(w == 0)  # dropped attention weights (no mask here)


# --------------------------------------------------------------------- the module itself


def test_projections_are_int8_and_no_float_weight_kept():
    m = _mha(batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert type(getattr(q, name)) is QuantLinear
    assert q.in_proj_weight is None and q.in_proj_bias is None
    assert list(q.parameters()) == []
    assert all(t.dtype != torch.float32 or t.numel() <= E for t in q.state_dict().values())
    w = m.in_proj_weight.detach()
    torch.testing.assert_close(q.k_proj.dequantize_weight(), w[E:2 * E],
                               atol=float(w[E:2 * E].abs().max()) / 127, rtol=0)
    torch.testing.assert_close(q.v_proj.bias, m.in_proj_bias.detach()[2 * E:])


def test_options_repr_and_weight_bytes():
    m = _mha(batch_first=True, add_bias_kv=True)
    q = QuantMultiheadAttention.from_float(m, weight="per_tensor", activation="per_tensor",
                                           threads=1)
    assert all(p.weight_scheme == "per_tensor" and p.activation_scheme == "per_tensor"
               and p.threads == 1 for p in (q.q_proj, q.k_proj, q.v_proj, q.out_proj))
    r = repr(q)
    assert "num_heads=4" in r and "per_tensor" in r and "add_bias_kv=True" in r
    projs = sum(p.weight_bytes() for p in (q.q_proj, q.k_proj, q.v_proj, q.out_proj))
    assert q.weight_bytes() == projs + 2 * E * 4  # + bias_k, bias_v in float32
    assert q.weight_bytes(include_packed=False) < q.weight_bytes()
    _both(m, q, _x(2, 3, E), _x(2, 3, E), _x(2, 3, E))


def test_dtype_casts_keep_float32_state():
    m = _mha(batch_first=True, add_bias_kv=True)
    q = QuantMultiheadAttention.from_float(m).to(torch.bfloat16)
    assert q.bias_k.dtype == torch.float32 and q.q_proj.bias.dtype == torch.float32
    x = _x(2, 3, E).to(torch.bfloat16)
    assert q(x, x, x)[0].dtype == torch.bfloat16


def test_state_dict_roundtrip_and_whole_model_pickle(tmp_path):
    m = _mha(batch_first=True, add_bias_kv=True)
    q = QuantMultiheadAttention.from_float(m)
    x = _x(2, 5, E)
    y = q(x, x, x)
    sd = q.state_dict()
    assert sd["q_proj.qweight"].dtype == torch.int8 and "bias_k" in sd
    assert not any(k.endswith("packed") for k in sd)
    fresh = QuantMultiheadAttention(E, H, add_bias_kv=True, batch_first=True)
    assert not torch.equal(fresh(x, x, x)[0], y[0])
    fresh.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(fresh(x, x, x), y))
    torch.save(q, tmp_path / "mha.pt")
    loaded = torch.load(tmp_path / "mha.pt", weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded(x, x, x), y))
    clone = copy.deepcopy(q)
    assert torch.equal(clone(x, x, x)[0], y[0])


def test_torch_compile_fullgraph_matches_eager():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    q = QuantMultiheadAttention.from_float(_mha(batch_first=True))
    x = _x(2, 5, E)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[1, 3:] = True
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True)  # any graph break is an error
    with torch.inference_mode():
        got = compiled(x, x, x, key_padding_mask=kpm, need_weights=False)[0]
    torch.testing.assert_close(got, q(x, x, x, key_padding_mask=kpm, need_weights=False)[0],
                               rtol=1e-4, atol=1e-5)


def test_from_float_validation():
    with pytest.raises(TypeError, match="mha"):
        QuantMultiheadAttention.from_float(nn.Linear(E, E))
    with pytest.raises(ValueError, match="weight"):
        QuantMultiheadAttention.from_float(_mha(), weight="per_row")
    with pytest.raises(ValueError, match="threads"):
        QuantMultiheadAttention.from_float(_mha(), threads=0)
    m = _mha()
    with torch.no_grad():
        m.out_proj.weight[0, 0] = float("nan")
    with pytest.raises(NotConvertibleError, match="out_proj"):
        QuantMultiheadAttention.from_float(m)
    with pytest.raises(ValueError, match="divisible"):
        QuantMultiheadAttention(E, 5)
    with pytest.raises(ValueError, match="num_heads"):
        QuantMultiheadAttention(E, 0)


@pytest.mark.parametrize("call,exc,match", [
    (lambda q, x: q(x.numpy(), x, x), TypeError, "query must be a torch.Tensor"),
    (lambda q, x: q(x.long(), x.long(), x.long()), TypeError, "query must have one of the dtypes"),
    (lambda q, x: q(x, x.int(), x), TypeError, "key must have one of the dtypes float32"),
    (lambda q, x: q(x, x.bfloat16(), x), TypeError, "one dtype"),
    (lambda q, x: q(x[..., :16], x, x), ValueError, r"query must have shape \[batch, seq, 32\]"),
    (lambda q, x: q(x, x[..., :16], x), ValueError, "key must have shape"),
    (lambda q, x: q(x, x, x[0]), ValueError, "value must have shape"),
    (lambda q, x: q(x[None], x[None], x[None]), ValueError, "query must have shape"),
    (lambda q, x: q(x[0, 0, 0], x, x), ValueError, "query must have shape"),
    (lambda q, x: q(x, x, x[:, :4]), ValueError, "key and value"),
    (lambda q, x: q(x, x[:1], x[:1]), ValueError, "key must have query's batch size"),
    (lambda q, x: q(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
     ValueError, "key_padding_mask must have shape"),
    (lambda q, x: q(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.int64)),
     TypeError, "key_padding_mask must be a bool or floating-point"),
    (lambda q, x: q(x, x, x, attn_mask=torch.zeros(5, 4)), ValueError, "attn_mask must have shape"),
    (lambda q, x: q(x, x, x, attn_mask=torch.zeros(2, 5, 5)), ValueError,
     "attn_mask must have shape"),
    (lambda q, x: q(x, x, x, attn_mask=[[0.0]]), TypeError, "attn_mask must be a torch.Tensor"),
    (lambda q, x: q(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.int32)), TypeError,
     "attn_mask must be a bool or floating-point"),
    (lambda q, x: q(x.to("meta"), x, x), ValueError, "query must be a CPU tensor"),
])
def test_bad_inputs_raise_naming_the_argument(call, exc, match):
    q = QuantMultiheadAttention.from_float(_mha(batch_first=True))
    with pytest.raises(exc, match=match):
        call(q, _x(2, 5, E))


# --------------------------------------------------------------- quantize_dynamic, layers


def _encoder(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 64, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_all_projections_int8(norm_first):
    enc = _encoder(norm_first)
    before = copy.deepcopy(enc.state_dict())
    q = int8kit.quantize_dynamic(enc)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())  # untouched
    assert type(enc.layers[0].self_attn) is nn.MultiheadAttention
    for layer in q.layers:
        assert type(layer.self_attn) is QuantMultiheadAttention
        assert type(layer.linear1) is QuantLinear and type(layer.linear2) is QuantLinear
    r = q.int8kit_report
    assert {row.name for row in r.converted} == {f"layers.{i}.{n}" for i in (0, 1)
                                                 for n in ("self_attn", "linear1", "linear2")}
    assert r.skipped == []  # out_proj is part of its attention's row, not one of its own
    att = [row for row in r.layers if row.module_type == "MultiheadAttention"]
    assert all("q, k, v, out" in row.detail and row.bytes_after < row.bytes_before / 2
               for row in att)
    calls = []
    q.layers[1].self_attn.out_proj.register_forward_hook(lambda *a: calls.append(1))
    x = _x(2, 7, E)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    keep = ~kpm
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            for kw in ({}, {"src_key_padding_mask": kpm}):
                y, yq = enc(x, **kw), q(x, **kw)
                _assert_close(y[keep], yq[keep])  # (torch's fused path zeroes padded rows)
    assert len(calls) == 4  # the int8 attention really ran, in every call


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_nested_tensor_encoder_and_encoders_built_after_conversion():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 64, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    assert enc.use_nested_tensor
    q = int8kit.quantize_dynamic(enc)
    assert not q.use_nested_tensor  # _fix_parents: its nested path reads float weights
    # A new encoder around a converted layer: in_proj_bias None turns the fused paths off
    # (torch's warning then calls it "bias=False").
    with pytest.warns(UserWarning, match="use_nested_tensor is False"):
        rebuilt = nn.TransformerEncoder(q.layers[0], 2, enable_nested_tensor=True).eval()
    assert not rebuilt.use_nested_tensor
    x = _x(2, 6, E)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[0, 4:] = True
    with torch.inference_mode():
        y, yq = enc(x, src_key_padding_mask=kpm), q(x, src_key_padding_mask=kpm)
        _assert_close(y[~kpm], yq[~kpm])
        assert rebuilt(x, src_key_padding_mask=kpm).shape == x.shape


def test_encoder_layer_with_only_attention_converted_takes_its_ordinary_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 64, dropout=0.0, batch_first=True).eval()
    q = int8kit.quantize_dynamic(layer, {nn.MultiheadAttention})
    assert type(q.self_attn) is QuantMultiheadAttention and type(q.linear1) is nn.Linear
    assert any("fast path" in n for n in q.int8kit_report.notes)
    # Without quantize_dynamic's hook, too: the fused kernel would need in_proj_weight.
    manual = copy.deepcopy(layer)
    manual.self_attn = QuantMultiheadAttention.from_float(layer.self_attn)
    x = _x(2, 5, E)
    with torch.inference_mode():
        y = layer(x)
        for mod in (q, manual):
            yq = mod(x)
            _assert_close(y, yq)
            assert not torch.equal(y, yq)  # the int8 projections did run


def test_transformer_decoder_layer_cross_attention():
    torch.manual_seed(0)
    dec = nn.TransformerDecoderLayer(E, H, 64, dropout=0.0, batch_first=True).eval()
    q = int8kit.quantize_dynamic(dec)
    assert type(q.self_attn) is QuantMultiheadAttention
    assert type(q.multihead_attn) is QuantMultiheadAttention
    assert len(q.int8kit_report.converted) == 4 and not q.int8kit_report.skipped
    tgt, mem = _x(2, 5, E), _x(2, 9, E, seed=4)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    mkpm = torch.zeros(2, 9, dtype=torch.bool)
    mkpm[1, 7:] = True
    with torch.no_grad():
        for kw in ({}, {"tgt_mask": causal, "tgt_is_causal": True,
                        "memory_key_padding_mask": mkpm}):
            _assert_close(dec(tgt, mem, **kw), q(tgt, mem, **kw))


def test_linear_only_spec_keeps_attention_float_and_says_how_to_convert_it():
    enc = _encoder(False)
    q = int8kit.quantize_dynamic(enc, {nn.Linear})
    r = q.int8kit_report
    assert type(q.layers[0].self_attn) is nn.MultiheadAttention
    assert {row.name for row in r.skipped} == {f"layers.{i}.self_attn.out_proj" for i in (0, 1)}
    assert all("add nn.MultiheadAttention to qconfig_spec" in row.detail for row in r.skipped)
    # per-type options reach the attention's projections
    q2 = int8kit.quantize_dynamic(enc, {nn.MultiheadAttention: {"weight": "per_tensor"},
                                        nn.Linear: None})
    assert q2.layers[0].self_attn.out_proj.weight_scheme == "per_tensor"
    assert q2.layers[0].linear1.weight_scheme == "per_channel"


def test_unconvertible_attention_is_reported_once_and_strict_raises():
    enc = _encoder(False)
    with torch.no_grad():
        enc.layers[0].self_attn.in_proj_weight[0, 0] = float("inf")
    q = int8kit.quantize_dynamic(enc)
    skipped = {row.name: row.detail for row in q.int8kit_report.skipped}
    assert "q_proj" in skipped["layers.0.self_attn"]
    assert "not converted" in skipped["layers.0.self_attn.out_proj"]
    assert type(q.layers[1].self_attn) is QuantMultiheadAttention
    with pytest.raises(NotConvertibleError, match="layers.0.self_attn"):
        int8kit.quantize_dynamic(enc, strict=True)
    s = int8kit.quantize_dynamic(enc, skip=["layers.1.self_attn"])
    assert type(s.layers[1].self_attn) is nn.MultiheadAttention
    assert "skip list" in {r.name: r.detail for r in s.int8kit_report.skipped}["layers.1.self_attn"]


def test_whole_encoder_state_dict_and_pickle_roundtrip(tmp_path):
    q = int8kit.quantize_dynamic(_encoder(True))
    x = _x(2, 6, E)
    with torch.inference_mode():
        y = q(x)
    fresh = int8kit.quantize_dynamic(nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, H, 64, dropout=0.0, batch_first=True, norm_first=True),
        2, enable_nested_tensor=False).eval())  # other random weights
    fresh.load_state_dict(q.state_dict())
    torch.save(q, tmp_path / "enc.pt")
    loaded = torch.load(tmp_path / "enc.pt", weights_only=False)
    with torch.inference_mode():
        assert torch.equal(fresh(x), y) and torch.equal(loaded(x), y)


def test_self_attention_projects_its_input_once_with_the_same_bits():
    # Self-attention quantizes x once for q, k and v (one native call); a hook on a
    # projection makes the module call each QuantLinear: the outputs must be equal.
    q = QuantMultiheadAttention.from_float(_mha(batch_first=True))
    x = _x(3, 7, E)
    fused = q(x, x, x, need_weights=False)[0]
    projections = q._project(x, x, x)
    calls = []
    q.q_proj.register_forward_hook(lambda *a: calls.append(1))
    assert torch.equal(q(x, x, x, need_weights=False)[0], fused) and calls == [1]
    for got, proj in zip(projections, (q.q_proj, q.k_proj, q.v_proj)):
        assert torch.equal(got, proj(x))


# ------------------------------------------------------- review fixes: names, shapes, masks


@pytest.mark.parametrize("which", ["query", "key", "value"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_named(which, bad):
    q = QuantMultiheadAttention.from_float(_mha(batch_first=True))
    x = _x(2, 5, E)
    args = {"query": x, "key": x.clone(), "value": x.clone()}
    args[which] = args[which].clone()
    args[which][1, 2, 3] = bad
    for nw in (False, True):
        with pytest.raises(ValueError, match=f"^{which} contains NaN or Inf"):
            q(*args.values(), need_weights=nw)
    if which == "query":  # self-attention: one tensor, one native call for q, k and v
        with pytest.raises(ValueError, match="^query contains NaN or Inf"):
            q(args["query"], args["query"], args["query"])


@pytest.mark.parametrize("which", ["query", "key"])
def test_range_too_wide_for_a_float32_scale_is_named(which):
    q = QuantMultiheadAttention.from_float(_mha(batch_first=True))
    x = _x(2, 5, E)
    args = {"query": x, "key": x.clone(), "value": x.clone()}
    args[which][0, 1, :2] = torch.tensor([2e38, -2e38])
    with pytest.raises(ValueError, match=f"^{which}: a row.s range .* too wide for a float32"):
        q(*args.values())


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("shape", [(E,), (1, 2, 5, E), (5, 16)])
def test_bad_rank_message_states_the_accepted_shapes(batch_first, shape):
    q = QuantMultiheadAttention.from_float(_mha(batch_first=batch_first))
    layout = r"\[batch, seq, 32\]" if batch_first else r"\[seq, batch, 32\]"
    x = _x(*shape)
    with pytest.raises(ValueError, match=rf"query must have shape {layout} \(batched\) or "
                                         r"\[seq, 32\] \(unbatched\), got"):
        q(x, x, x)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_fully_masked_batch_element_matches_float_row_by_row(batch_first, need_weights,
                                                             mask_kind):
    # Batch element 1 has every key padded: float gives NaN for its rows with
    # need_weights=True (softmax over no keys), and whatever SDPA gives without (finite in
    # torch 2.13). The other batch elements must be unaffected, not an error for the batch.
    m = _mha(batch_first=batch_first)
    q = QuantMultiheadAttention.from_float(m)
    x = _x(3, 5, E) if batch_first else _x(5, 3, E)
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    kpm[1] = True
    kpm[2, 3:] = True
    if mask_kind == "float":
        kpm = torch.zeros(3, 5).masked_fill(kpm, float("-inf"))
    out, w = _both(m, q, x, x, x, key_padding_mask=kpm, need_weights=need_weights)
    rows = out.isnan().any(-1) if batch_first else out.isnan().any(-1).t()  # [batch, seq]
    assert not rows[[0, 2]].any()
    if need_weights:
        assert rows[1].all() and w[1].isnan().all() and not w[[0, 2]].isnan().any()
    # Cross-attention and unbatched input take the same rule.
    kv = _x(3, 5, E, seed=7) if batch_first else _x(5, 3, E, seed=7)
    _both(m, q, x, kv, kv, key_padding_mask=kpm, need_weights=need_weights)
    b = (lambda t: t[1]) if batch_first else (lambda t: t[:, 1])
    _both(m, q, b(x), b(x), b(x), key_padding_mask=kpm[1], need_weights=need_weights)


def test_attn_mask_fully_masking_one_query_of_one_head():
    m = _mha(batch_first=True)
    q = QuantMultiheadAttention.from_float(m)
    x = _x(2, 5, E)
    mask = torch.zeros(2 * H, 5, 5, dtype=torch.bool)
    mask[H + 1, 3] = True  # batch 1, head 1, query 3: no key left
    for nw in (False, True):
        out, _ = _both(m, q, x, x, x, attn_mask=mask, need_weights=nw)
        if nw:  # out_proj mixes the heads: that query's output row is NaN, and only that
            assert out.isnan().any(-1).nonzero().tolist() == [[1, 3]]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["key_padding_mask", "attn_mask"])
def test_float_mask_with_nan_or_plus_inf_is_named(bad, which):
    q = QuantMultiheadAttention.from_float(_mha(batch_first=True))
    x = _x(2, 5, E)
    mask = torch.zeros(2, 5) if which == "key_padding_mask" else torch.zeros(5, 5)
    mask[1, 2] = bad
    for nw in (False, True):
        with pytest.raises(ValueError, match=f"^{which} contains NaN or \\+inf"):
            q(x, x, x, need_weights=nw, **{which: mask})
