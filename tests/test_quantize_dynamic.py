"""quantize_dynamic: selection, skipping, reporting, atomicity, transformer layers."""

import copy

import pytest
import torch
from torch import nn

import int8kit
from int8kit.dynamic import DYNAMIC_MODULES
from int8kit.nn import NotConvertibleError, QuantLinear


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.fc2(self.act(self.fc1(x))))


class Net(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.blocks = nn.ModuleList([Block(d), Block(d)])
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(d, 5, bias=False))

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


LINEARS = ["embed", "blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2", "head.1"]


def _net():
    torch.manual_seed(0)
    return Net().eval()


def _x():
    return torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: type(m) for n, m in model.named_modules()})


def _assert_unchanged(model, snap):
    sd, types = snap
    assert {n: type(m) for n, m in model.named_modules()} == types
    now = model.state_dict()
    assert now.keys() == sd.keys() and all(torch.equal(now[k], sd[k]) for k in sd)


def test_converts_every_nested_linear_and_leaves_the_original_untouched():
    model = _net()
    snap = _snapshot(model)
    q = int8kit.quantize_dynamic(model)
    _assert_unchanged(model, snap)
    assert q is not model
    assert {n for n, m in q.named_modules() if isinstance(m, QuantLinear)} == set(LINEARS)
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert isinstance(q.blocks[0].norm, nn.LayerNorm)  # everything else kept as it was
    y, yq = model(_x()).detach(), q(_x())
    assert float((yq - y).abs().max()) < 0.05 * float(y.abs().max())
    r = q.int8kit_report
    assert [l.name for l in r.converted] == LINEARS and r.skipped == []
    # The int8 weight plus its packed copy: under the float bytes except for tiny layers
    # (the head has N=5, padded to a 16-wide panel).
    assert all(l.bytes_after < l.bytes_before for l in r.converted if l.name != "head.1")
    assert r.model_bytes_after < r.model_bytes_before


def test_inplace_modifies_and_returns_the_same_model():
    model = _net()
    q = int8kit.quantize_dynamic(model, inplace=True)
    assert q is model and isinstance(model.blocks[1].fc2, QuantLinear)


def test_report_table_and_dict():
    q = int8kit.quantize_dynamic(_net(), skip=["head"])
    r = q.int8kit_report
    assert isinstance(r, int8kit.ConversionReport)
    text = str(r)
    assert "blocks.0.fc1" in text and "converted" in text and "skipped" in text
    assert "in skip list ('head')" in text and "5 converted, 1 skipped" in text
    d = r.to_dict()
    assert d["converted"] == 5 and d["skipped"] == 1
    assert d["layers"][0]["name"] == "embed"
    assert d["layers"][0]["bytes_before"] == (16 * 32 + 32) * 4
    assert d["model_bytes_before"] == sum(p.numel() * 4 for p in _net().parameters())


def test_skip_list_by_name_and_prefix():
    q = int8kit.quantize_dynamic(_net(), skip=["blocks.0", "head.1"])
    assert type(q.blocks[0].fc1) is nn.Linear and type(q.blocks[0].fc2) is nn.Linear
    assert type(q.head[1]) is nn.Linear and isinstance(q.blocks[1].fc1, QuantLinear)
    skipped = {l.name: l.detail for l in q.int8kit_report.skipped}
    assert skipped == {"blocks.0.fc1": "in skip list ('blocks.0')",
                       "blocks.0.fc2": "in skip list ('blocks.0')",
                       "head.1": "in skip list ('head.1')"}
    with pytest.raises(ValueError, match="skip: the model has no module named \\['blocks.7'\\]"):
        int8kit.quantize_dynamic(_net(), skip=["blocks.7"])


def test_select_by_name_and_per_layer_options():
    q = int8kit.quantize_dynamic(_net(), {"blocks.1"})
    assert {n for n, m in q.named_modules() if isinstance(m, QuantLinear)} == {
        "blocks.1.fc1", "blocks.1.fc2"}
    q = int8kit.quantize_dynamic(_net(), {nn.Linear: None, "head.1": {"weight": "per_tensor"}},
                                 activation="per_tensor")
    assert q.head[1].weight_scheme == "per_tensor" and q.embed.weight_scheme == "per_channel"
    assert q.embed.activation_scheme == "per_tensor"
    assert "per_tensor" in q.int8kit_report.layers[-1].detail


def test_bad_specs_are_clear_errors():
    model = _net()
    with pytest.raises(ValueError, match="no dynamic quantized module for Conv1d"):
        int8kit.quantize_dynamic(model, {nn.Linear, nn.Conv1d})
    with pytest.raises(ValueError, match="no module named 'nope'"):
        int8kit.quantize_dynamic(model, {"nope"})
    with pytest.raises(TypeError, match="qconfig_spec"):
        int8kit.quantize_dynamic(model, nn.Linear)
    with pytest.raises(TypeError, match="qconfig_spec entries"):
        int8kit.quantize_dynamic(model, {3})
    with pytest.raises(TypeError, match="option"):
        int8kit.quantize_dynamic(model, {nn.Linear: "per_tensor"})
    with pytest.raises(ValueError, match="weight must be one of"):
        int8kit.quantize_dynamic(model, weight="int4")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        int8kit.quantize_dynamic(lambda x: x)


def test_unconvertible_layer_is_reported_not_dropped_and_strict_raises():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(int8kit.ops.MAX_K + 1, 2))
    snap = _snapshot(model)
    q = int8kit.quantize_dynamic(model)
    assert isinstance(q[0], QuantLinear) and type(q[1]) is nn.Linear
    (skipped,) = q.int8kit_report.skipped
    assert skipped.name == "1" and "MAX_K" in skipped.detail
    assert skipped.bytes_after == skipped.bytes_before
    for inplace in (False, True):
        with pytest.raises(NotConvertibleError, match="cannot convert 1: .*MAX_K"):
            int8kit.quantize_dynamic(model, strict=True, inplace=inplace)
        _assert_unchanged(model, snap)


@pytest.mark.parametrize("inplace", [False, True])
def test_failure_midway_leaves_the_model_unchanged(monkeypatch, inplace):
    model = _net()
    snap = _snapshot(model)
    original = QuantLinear.from_float.__func__
    calls = []

    def flaky(cls, mod, **kw):
        calls.append(mod)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return original(cls, mod, **kw)

    monkeypatch.setattr(QuantLinear, "from_float", classmethod(flaky))
    with pytest.raises(RuntimeError, match="boom"):
        int8kit.quantize_dynamic(model, inplace=inplace)
    assert len(calls) == 4  # three layers were converted before the failure...
    _assert_unchanged(model, snap)  # ...and none of them reached the model


def test_subclasses_are_skipped_with_a_reason_unless_registered(monkeypatch):
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(MyLinear(4, 4), nn.Linear(4, 4))
    q = int8kit.quantize_dynamic(model)
    assert type(q[0]) is MyLinear and isinstance(q[1], QuantLinear)
    assert "subclass of Linear" in q.int8kit_report.skipped[0].detail
    monkeypatch.setitem(DYNAMIC_MODULES, MyLinear, QuantLinear)
    q = int8kit.quantize_dynamic(model, {MyLinear})
    assert isinstance(q[0], QuantLinear) and type(q[1]) is nn.Linear
    with pytest.raises(TypeError, match="from_float"):
        int8kit.register_dynamic_module(nn.Conv2d, nn.Conv2d)


def test_root_linear_shared_modules_hooks_and_tied_weights():
    torch.manual_seed(0)
    root = nn.Linear(6, 3)
    assert isinstance(int8kit.quantize_dynamic(root), QuantLinear)

    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    q = int8kit.quantize_dynamic(model)
    assert q[0] is q[2] and isinstance(q[0], QuantLinear)

    seen = []
    model = nn.Sequential(nn.Linear(6, 6))
    model[0].register_forward_hook(lambda m, i, o: seen.append(type(m)))
    int8kit.quantize_dynamic(model)(torch.randn(2, 6))
    assert seen == [QuantLinear]

    emb = nn.Embedding(10, 6)
    head = nn.Linear(6, 10, bias=False)
    head.weight = emb.weight
    q = int8kit.quantize_dynamic(nn.ModuleDict({"emb": emb, "head": head}))
    assert "tied to ['emb']" in q.int8kit_report.converted[0].detail


def test_model_without_linears_and_quantizing_twice():
    q = int8kit.quantize_dynamic(nn.Sequential(nn.ReLU()))
    assert q.int8kit_report.layers == [] and "0 converted" in str(q.int8kit_report)
    once = int8kit.quantize_dynamic(_net())
    twice = int8kit.quantize_dynamic(once)  # QuantLinear is no nn.Linear: nothing to do
    assert twice.int8kit_report.layers == [] and torch.equal(twice(_x()), once(_x()))


def test_state_dict_and_whole_model_roundtrip(tmp_path):
    q = int8kit.quantize_dynamic(_net())
    sd = q.state_dict()
    assert not any(k.endswith("packed") for k in sd)
    assert sd["embed.qweight"].dtype == torch.int8
    fresh = int8kit.quantize_dynamic(Net().eval())  # other random weights
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(_x()), q(_x()))
    torch.save(q, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(loaded(_x()), q(_x()))
    assert loaded.int8kit_report.to_dict() == q.int8kit_report.to_dict()


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_transformer_encoder_converts_ffn_and_reports_attention():
    enc = _encoder()
    q = int8kit.quantize_dynamic(enc, {nn.Linear})  # the default converts attention too
    r = q.int8kit_report
    assert {l.name for l in r.converted} == {f"layers.{i}.linear{j}"
                                             for i in (0, 1) for j in (1, 2)}
    assert {l.name for l in r.skipped} == {"layers.0.self_attn.out_proj",
                                           "layers.1.self_attn.out_proj"}
    assert all("MultiheadAttention" in l.detail for l in r.skipped)
    assert any("fast path" in n for n in r.notes)
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 6:] = True
    calls = []
    q.layers[0].linear1.register_forward_hook(lambda *a: calls.append(1))
    with torch.inference_mode():  # where torch's fused fast path would bypass the layers
        for kw in ({}, {"src_key_padding_mask": mask}):
            y, yq = enc(x, **kw), q(x, **kw)
            keep = ~mask  # torch's nested-tensor path zeroes padded positions; compare the rest
            cos = torch.nn.functional.cosine_similarity(y[keep].flatten(), yq[keep].flatten(), 0)
            assert float(cos) > 0.999
    assert len(calls) == 2  # the int8 layers really ran, once per forward


def test_converted_depthwise_convs_are_named_in_a_note():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.Conv2d(16, 16, 3, padding=1, groups=4)).eval()
    q = int8kit.quantize_dynamic(model, {nn.Conv2d})
    notes = [n for n in q.int8kit_report.notes if "depthwise" in n]
    assert len(notes) == 1 and "(1)" in notes[0] and "slower than float32" in notes[0]
    assert "note: depthwise convs converted (1)" in str(q.int8kit_report)
    q = int8kit.quantize_dynamic(model, {nn.Conv2d}, skip=["1"])  # kept float: no note
    assert not any("depthwise" in n for n in q.int8kit_report.notes)


def test_transformer_relu_runs_in_linear1s_epilogue_with_the_same_results(tmp_path):
    enc = _encoder()  # activation "relu": the functional F.relu
    q = int8kit.quantize_dynamic(enc)
    r = q.int8kit_report
    assert [q.layers[i].linear1.relu for i in (0, 1)] == [True, True]
    assert not q.layers[0].linear2.relu
    assert any("ReLU fused into linear1's epilogue in 2" in n for n in r.notes)
    assert all(l.detail.endswith("relu fused") for l in r.converted if l.name.endswith("linear1"))
    # The same model with the ReLU left where it was gives the same bits.
    unfused = copy.deepcopy(q)
    for layer in unfused.layers:
        layer.linear1.relu, layer.activation = False, torch.nn.functional.relu
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        y = q(x)
        assert torch.equal(y, unfused(x))
        torch.save(q, tmp_path / "q.pt")  # the identity activation pickles
        assert torch.equal(torch.load(tmp_path / "q.pt", weights_only=False)(x), y)
        ep = torch.export.export(q, (x,))
        assert torch.equal(ep.module()(x), y)
    # compare() measures linear1 after the ReLU its float twin leaves to the layer.
    rep = int8kit.compare(enc, q, x, batch_sizes=(1,), latency_repeats=2, measure_memory=False)
    assert {s.name: s for s in rep.layers}["layers.0.linear1"].sqnr_db > 30
    # Other activations stay where they are.
    torch.manual_seed(0)
    gelu = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, activation="gelu",
                                                            batch_first=True), 1).eval()
    qg = int8kit.quantize_dynamic(gelu)
    assert not qg.layers[0].linear1.relu and not any("ReLU fused" in n
                                                     for n in qg.int8kit_report.notes)


def _shared():
    torch.manual_seed(0)
    m = nn.Module()
    m.encoder_proj = m.decoder_proj = nn.Linear(8, 8)
    return m


def test_module_shared_under_two_names_obeys_either_name():
    q = int8kit.quantize_dynamic(_shared(), skip=["decoder_proj"])
    assert type(q.encoder_proj) is nn.Linear and q.encoder_proj is q.decoder_proj
    (row,) = q.int8kit_report.layers
    assert (row.name, row.aliases, row.detail) == (
        "encoder_proj", ["decoder_proj"], "in skip list ('decoder_proj')")
    assert "encoder_proj, decoder_proj" in str(q.int8kit_report)

    q = int8kit.quantize_dynamic(_shared(), {"decoder_proj": {"weight": "per_tensor"}})
    assert isinstance(q.encoder_proj, QuantLinear) and q.encoder_proj is q.decoder_proj
    assert q.decoder_proj.weight_scheme == "per_tensor"
    (row,) = q.int8kit_report.converted
    assert row.aliases == ["decoder_proj"] and "tied" not in row.detail
    assert not q.int8kit_report.notes
    with pytest.raises(ValueError, match="different options"):
        int8kit.quantize_dynamic(_shared(), {"encoder_proj": {"weight": "per_tensor"},
                                             "decoder_proj": None})


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.fc = nn.MultiheadAttention(16, 2, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x)[0])


def test_skipping_part_of_an_attention_keeps_the_whole_attention_in_float():
    torch.manual_seed(0)
    model = Attn().eval()
    q = int8kit.quantize_dynamic(model, skip=["attn.out_proj"])
    assert type(q.attn) is nn.MultiheadAttention and isinstance(q.fc, QuantLinear)
    rows = {r.name: r for r in q.int8kit_report.layers}
    assert not rows["attn"].converted
    assert rows["attn"].detail.startswith("kept in float: 'attn.out_proj' is in the skip list")
    assert rows["attn.out_proj"].detail == "in skip list ('attn.out_proj')"
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(q.attn(x, x, x)[0], model.attn(x, x, x)[0])
    int8kit.quantize_dynamic(model, skip=["attn.out_proj"], strict=True)  # a choice, no error
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="'attn.out_proj' lies inside 'attn'.*select 'attn'"):
        int8kit.quantize_dynamic(model, {nn.MultiheadAttention: None,
                                         "attn.out_proj": {"weight": "per_tensor"}},
                                 inplace=True)
    _assert_unchanged(model, snap)


def test_inplace_keeps_the_users_hook_handles_working():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    calls = []
    handle = model[0].register_forward_hook(lambda m, i, o: calls.append(type(m)))
    int8kit.quantize_dynamic(model, inplace=True)
    model(torch.randn(2, 8))
    assert calls == [QuantLinear]
    handle.remove()
    model(torch.randn(2, 8))
    assert calls == [QuantLinear]


def test_copy_keeps_hooks_that_the_originals_handles_do_not_reach():
    model = nn.Sequential(nn.Linear(8, 8))
    calls = []
    handle = model[0].register_forward_hook(lambda m, i, o: calls.append(type(m)))
    q = int8kit.quantize_dynamic(model)
    handle.remove()  # removes the hook from `model` only: the copy has its own hook dicts
    q(torch.randn(2, 8))
    model(torch.randn(2, 8))
    assert calls == [QuantLinear]


def test_tied_weights_converted_together_each_get_an_int8_copy_and_say_so():
    m = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    m[1].weight = m[0].weight
    r = int8kit.quantize_dynamic(m).int8kit_report
    assert [row.converted for row in r.layers] == [True, True]
    assert "float copy stays" not in str(r)
    assert "weight tied to ['1'], converted too" in r.layers[0].detail
    assert "weight tied to ['0'], converted too" in r.layers[1].detail
    assert any("tied weight converted separately in ['0', '1']" in n for n in r.notes)
    r = int8kit.quantize_dynamic(m, skip=["1"]).int8kit_report
    assert "weight tied to ['1'], whose float copy stays" in r.layers[0].detail
    assert not r.notes


def test_a_model_that_cannot_be_copied_is_a_clear_error():
    import threading

    model = _net()
    model.lock = threading.Lock()
    with pytest.raises(TypeError, match="could not be deep-copied.*pass inplace=True"):
        int8kit.quantize_dynamic(model)
    assert isinstance(int8kit.quantize_dynamic(model, inplace=True).embed, QuantLinear)


def test_a_converted_root_attention_has_one_row():
    # its out_proj is inside the replaced root: no row claiming the attention stayed float
    r = int8kit.quantize_dynamic(nn.MultiheadAttention(16, 2).eval()).int8kit_report
    assert [(row.name, row.converted) for row in r.layers] == [("", True)]


def test_layers_called_with_keyword_input_run_after_conversion():
    """nn.Linear and nn.Conv2d name their argument `input`; a model that calls
    self.fc(input=x) must still run once its layers are swapped."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(input=self.conv(input=x).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    q = int8kit.quantize_dynamic(model, {nn.Linear, nn.Conv2d})
    assert all(r.converted for r in q.int8kit_report.layers)
    torch.testing.assert_close(q(x), model(x), atol=0.05, rtol=0)
