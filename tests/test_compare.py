"""int8kit.compare: every number checked against a value computed here, independently."""

from __future__ import annotations

import copy
import json
import math
import os
import warnings

import pytest
import torch
from torch import nn

import int8kit
from int8kit.evaluate import SECTIONS, compare

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = dict(batch_sizes=(1, 4), latency_repeats=3, measure_memory=False)
# Peak-RSS numbers need Linux's /proc, and no ASan: its quarantine changes what RSS shows.
RSS_MEASURABLE = (os.path.exists("/proc/self/status")
                  and "libasan" not in os.environ.get("LD_PRELOAD", ""))
RSS_REASON = "measures peak RSS: needs Linux /proc and no ASan"


class Table(nn.Module):
    """Returns a fixed score row per sample index: predictions fully controlled."""

    def __init__(self, scores):
        super().__init__()
        self.register_buffer("scores", scores)

    def forward(self, idx):
        return self.scores[idx[:, 0].long()]


class Scaled(nn.Module):
    """Wraps a layer and perturbs its output by a known amount (same qualified name)."""

    def __init__(self, inner, scale=1.0, noise=None):
        super().__init__()
        self.inner, self.scale, self.noise = inner, scale, noise

    def forward(self, x):
        y = self.inner(x) * self.scale
        return y if self.noise is None else y + self.noise[: len(y)]


def _table_models(n=200, classes=4, flips=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(n, classes, generator=g)
    qs = fs.clone()
    changed = torch.randperm(n, generator=g)[:flips]
    for i in changed.tolist():  # force a different argmax on exactly these rows
        qs[i, (int(fs[i].argmax()) + 1) % classes] = fs[i].max() + 1.0
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.randint(0, classes, (n,), generator=g)
    return Table(fs), Table(qs), x, y


def test_accuracy_flips_and_per_class_slices_match_independent_values():
    fm, qm, x, y = _table_models()
    fp, qp = fm.scores.argmax(1), qm.scores.argmax(1)
    r = compare(fm, qm, (x, y), **FAST)
    assert r.metric["float"] == pytest.approx(float((fp == y).double().mean()))
    assert r.metric["quantized"] == pytest.approx(float((qp == y).double().mean()))
    c = r.changed_predictions
    assert c["count"] == 23 == int((fp != qp).sum())
    assert c["broken"] == int(((fp == y) & (qp != y)).sum())
    assert c["fixed"] == int(((fp != y) & (qp == y)).sum())
    assert sum(t["count"] for t in c["transitions"]) <= 23
    for e in c["examples"]:
        assert e["float"] == int(fp[e["index"]]) != e["quantized"] == int(qp[e["index"]])
    by_name = {s["name"]: s for s in r.slices}
    assert set(by_name) == {f"class {k}" for k in range(4)}
    for k in range(4):
        m = y == k
        s = by_name[f"class {k}"]
        assert s["n"] == int(m.sum())
        assert s["float"] == pytest.approx(float((fp[m] == k).double().mean()))
        assert s["quantized"] == pytest.approx(float((qp[m] == k).double().mean()))
        assert s["changed"] == int((fp != qp)[m].sum())
    deltas = [s["delta"] for s in r.slices]
    assert deltas == sorted(deltas)  # largest drop first


def test_caller_slices_and_callable_metric():
    fm, qm, x, y = _table_models(seed=1)
    fo, qo = fm.scores, qm.scores

    def neg_mse(out, labels):  # any callable(outputs, labels) -> float
        return -float(((out - nn.functional.one_hot(labels, 4).float()) ** 2).mean())

    first = torch.arange(len(y)) < 50
    r = compare(fm, qm, (x, y), metric=neg_mse,
                slices={"first 50": first, "label 2": lambda xx, yy: yy == 2}, **FAST)
    assert r.metric_name == "neg_mse"
    assert r.metric["quantized"] == pytest.approx(neg_mse(qo, y))
    s = {s["name"]: s for s in r.slices}
    assert s["first 50"]["n"] == 50
    assert s["first 50"]["float"] == pytest.approx(neg_mse(fo[first], y[first]))
    assert s["label 2"]["quantized"] == pytest.approx(neg_mse(qo[y == 2], y[y == 2]))


def test_iterable_of_batches_gives_the_same_report_as_a_tuple():
    fm, qm, x, y = _table_models()
    batches = [(x[i:i + 30], y[i:i + 30]) for i in range(0, len(x), 30)]
    a = compare(fm, qm, (x, y), **FAST)
    b = compare(fm, qm, batches, **FAST)
    assert a.metric == b.metric and a.changed_predictions == b.changed_predictions


def _mlp(d=8, hidden=16, out=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out))


def test_sqnr_and_cosine_of_known_perturbations():
    fm = _mlp()
    x = torch.randn(64, 8)
    noise = 0.05 * torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    qm = copy.deepcopy(fm)
    qm[0] = Scaled(qm[0], noise=noise)   # additive noise at layer 0
    qm[2] = Scaled(qm[2], scale=1.01)    # 1 % gain at layer 2: SQNR would be 40 dB alone
    r = compare(fm, qm, x, eval_batch_size=64, **FAST)
    stats = {s.name: s for s in r.layers}
    with torch.no_grad():
        ref0 = fm[0](x).double()
    n = noise.double()
    assert stats["0"].sqnr_db == pytest.approx(
        10 * math.log10(float((ref0 ** 2).sum() / (n ** 2).sum())), rel=1e-6)
    assert stats["0"].cosine == pytest.approx(float(
        nn.functional.cosine_similarity(ref0.flatten(), (ref0 + n).flatten(), dim=0)), rel=1e-9)
    with torch.no_grad():
        ref2 = fm(x).double()
        q2 = fm[2](torch.relu(fm[0](x) + noise)).double() * 1.01
    assert stats["2"].sqnr_db == pytest.approx(
        10 * math.log10(float((ref2 ** 2).sum() / ((ref2 - q2) ** 2).sum())), rel=1e-5)
    assert [s.sqnr_db for s in r.layers] == sorted(s.sqnr_db for s in r.layers)
    assert stats["0"].quant_type == "Scaled" and stats["0"].calls == 1
    assert r.output["sqnr_db"] == pytest.approx(stats["2"].sqnr_db, rel=1e-6)


def test_in_place_activation_after_a_layer_does_not_change_its_reference():
    # MobileNet's ReLU6(inplace=True) clamps the tensor a layer returned; the float
    # reference recorded for that layer must be its output as returned, not as clamped
    # later (the quantized side is compared at once, before the activation runs).
    torch.manual_seed(0)
    fm = nn.Sequential(nn.Linear(8, 16), nn.ReLU6(inplace=True), nn.Linear(16, 4)).eval()
    qm = copy.deepcopy(fm)
    qm[0] = Scaled(qm[0], scale=1.01)  # 1 % gain: 40 dB at layer 0
    r = compare(fm, qm, torch.randn(32, 8), **FAST)
    stats = {s.name: s for s in r.layers}
    assert stats["0"].sqnr_db == pytest.approx(40.0, rel=1e-4)
    assert stats["1"].sqnr_db > 30


def test_identical_models_give_infinite_sqnr_and_no_flips():
    fm = _mlp()
    r = compare(fm, copy.deepcopy(fm), torch.randn(20, 8), **FAST)
    assert all(math.isinf(s.sqnr_db) and s.cosine == pytest.approx(1.0) for s in r.layers)
    assert r.changed_predictions["count"] == 0 and r.metric is None
    assert r.to_dict()["layers"][0]["sqnr_db"] == "inf"


def test_unmatched_layers_are_listed():
    fm = _mlp()
    qm = copy.deepcopy(fm)
    qm.add_module("extra", nn.ReLU())      # only in the quantized model (never called)
    fm2 = copy.deepcopy(fm)
    fm2.add_module("unused", nn.Tanh())    # only in the float model
    r = compare(fm2, qm, torch.randn(10, 8), **FAST)
    assert r.unmatched_layers == {"float_only": ["unused"], "quantized_only": ["extra"]}


def test_attention_is_compared_as_one_layer():
    # nn.MultiheadAttention never calls its out_proj module, and the int8 form has four
    # projections: the attention itself is the layer compared, its children are not listed.
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    fm = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    qm = int8kit.quantize_dynamic(fm)
    r = compare(fm, qm, torch.randn(3, 5, 16), **FAST)
    att = next(s for s in r.layers if s.name == "layers.0.self_attn")
    assert (att.float_type, att.quant_type) == ("MultiheadAttention", "QuantMultiheadAttention")
    assert att.calls == 1 and att.cosine > 0.999
    assert not any("proj" in s.name for s in r.layers)
    assert r.unmatched_layers == {"float_only": [], "quantized_only": []}


def test_fused_group_is_compared_at_its_last_member():
    import torch.ao.quantization as tq
    torch.manual_seed(0)
    fm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm = tq.fuse_modules(copy.deepcopy(fm), [["0", "1", "2"]])
    r = compare(fm, qm, torch.randn(6, 3, 8, 8), **FAST)
    assert [s.name for s in r.layers] == ["0 (fused with 1, 2)"]
    assert r.layers[0].sqnr_db > 80  # fusion only reorders float arithmetic


def test_wrapped_quantized_model_is_matched_under_its_prefix():
    fm = _mlp()
    noisy = copy.deepcopy(fm)
    noisy[2] = Scaled(noisy[2], scale=1.1)  # a 10 % gain: 20 dB at layer 2 exactly
    wrapped = nn.Sequential(nn.Identity(), noisy, nn.Identity())  # stub, model, stub
    r = compare(fm, wrapped, torch.randn(12, 8), **FAST)
    stats = {s.name: s for s in r.layers}
    assert set(stats) == {"0", "1", "2"}
    assert stats["2"].sqnr_db == pytest.approx(20.0, rel=1e-6)
    assert math.isinf(stats["0"].sqnr_db)
    assert any("'1'" in n for n in r.notes)
    assert r.unmatched_layers["quantized_only"] == ["0", "2"]


def test_static_int8kit_model_layers():
    torch.manual_seed(0)
    fm = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                       nn.Linear(8 * 36, 10))
    x = torch.rand(16, 1, 6, 6)
    for handoff in (False, True):
        qm = int8kit.quantize_static(fm, x, handoff=handoff)
        r = compare(fm, qm, x, **FAST)
        head = next(s for s in r.layers if s.name.startswith("0"))
        assert head.name == "0 (fused with 1)"
        # compare's hooks make a QuantSequential call its layers one by one (same bits as
        # the uint8 hand-off), so their statistics are real in both cases
        assert head.calls == 1 and head.sqnr_db > 25
        assert r.output["sqnr_db"] > 25


def test_int8kit_and_torch_ao_models_and_weight_bytes():
    import torch.ao.quantization as tq
    fm = _mlp(64, 96, 48).train()  # big enough that int8 beats the packing's padding
    qm = int8kit.quantize_dynamic(fm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        am = tq.quantize_dynamic(fm, {nn.Linear}, dtype=torch.qint8)
    x = torch.randn(40, 64)
    y = torch.randint(0, 48, (40,))
    before = {k: v.clone() for k, v in fm.state_dict().items()}
    for model in (qm, am):
        r = compare(fm, model, (x, y), batch_sizes=(2,), latency_repeats=3)
        assert {s.name for s in r.layers} == {"0", "1", "2"}
        assert all(s.sqnr_db > 20 and s.calls == 1 for s in r.layers)
        assert r.memory["float"]["weight_bytes"] == sum(p.numel() * 4 for p in fm.parameters())
        assert 0 < r.memory["quantized"]["weight_bytes"] < r.memory["float"]["weight_bytes"]
        assert r.memory["quantized"]["peak_rss_bytes"] > 0
    assert {s.quant_type for s in r.layers} >= {"ao.Linear"}
    int8kit_bytes = sum(m.weight_bytes() for m in qm.modules() if hasattr(m, "weight_bytes"))
    r = compare(fm, qm, x, **FAST)
    assert r.memory["quantized"]["weight_bytes"] == int8kit_bytes
    # never modified: training flags restored, no hooks left, same weights
    assert fm.training and all(m.training for m in fm.modules())
    assert all(not m._forward_hooks for m in list(fm.modules()) + list(qm.modules()))
    assert all(torch.equal(before[k], v) for k, v in fm.state_dict().items())


def test_latency_section_and_text():
    fm = _mlp()
    r = compare(fm, int8kit.quantize_dynamic(fm), torch.randn(5, 8), batch_sizes=(1, 8),
                latency_repeats=7, measure_memory=False)
    assert [s.batch_size for s in r.latency] == [1, 8]  # 8 > 5 samples: data is cycled
    for s in r.latency:
        assert len(s.float_ms) == len(s.quant_ms) == 7
        f = s.float_summary
        assert f["p50_ms"] <= f["p90_ms"] <= f["p99_ms"]
        assert f["throughput_per_s"] == pytest.approx(s.batch_size / (f["p50_ms"] / 1e3))
    text = str(r)
    assert "Per layer" in text and "Latency" in text and "Weights" in text


def test_json_has_every_section_and_plots_are_pngs(tmp_path):
    fm, qm, x, y = _table_models()
    mlp = _mlp()
    r = compare(mlp, int8kit.quantize_dynamic(mlp), (torch.randn(30, 8), y[:30]),
                batch_sizes=(1, 2), latency_repeats=5)
    path = r.to_json(tmp_path / "r.json")
    with open(path) as f:
        d = json.load(f, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert set(SECTIONS) <= set(d)
    assert d["memory"]["method"] and d["latency"][0]["quantized"]["p99_ms"] > 0
    paths = r.plot(tmp_path / "plots")
    assert len(paths) == 2
    for p in paths:
        data = open(p, "rb").read()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(data=torch.empty(0, 8)), ValueError, "data"),
    (dict(data=[]), ValueError, "data"),
    (dict(data=torch.randn(4, 8), labels=torch.zeros(3, dtype=torch.long)), ValueError, "labels"),
    (dict(data=torch.randn(4, 8), metric="f1"), ValueError, "metric"),
    (dict(data=torch.randn(4, 8), batch_sizes=(0,)), ValueError, "batch_sizes"),
    (dict(data=torch.randn(4, 8), latency_repeats=0), ValueError, "latency_repeats"),
    (dict(data=torch.randn(4, 8), latency_repeats=(2, 3)), TypeError, "latency_repeats"),
    (dict(data=torch.randn(4, 8), eval_batch_size=2.0), TypeError, "eval_batch_size"),
    (dict(data=torch.randn(4, 8), max_examples=-1), ValueError, "max_examples"),
    (dict(data=torch.randn(4, 8), slices={"s": torch.ones(3, dtype=torch.bool)}),
     ValueError, "slices['s']"),
    (dict(data=torch.randn(4, 8), layers=["nope"]), ValueError, "layers"),
    (dict(data="text"), TypeError, "data"),
])
def test_bad_input_raises_clear_errors(kwargs, exc, word):
    fm = _mlp()
    with pytest.raises(exc, match=word.replace("[", r"\[").replace("]", r"\]")):
        compare(fm, copy.deepcopy(fm), **FAST | kwargs)


def test_model_errors_name_the_model_and_flags_are_restored():
    fm = _mlp().train()
    bad = nn.Sequential(nn.Linear(3, 4))  # wrong in_features
    with pytest.raises(RuntimeError, match="quantized_model failed"):
        compare(fm, bad, torch.randn(4, 8), **FAST)
    assert fm.training and bad.training
    assert all(not m._forward_hooks for m in fm.modules())
    with pytest.raises(TypeError, match="float_model"):
        compare(lambda x: x, fm, torch.randn(4, 8), **FAST)


# ----------------------------------------------------------------------------- review fixes

def test_label_column_is_read_as_class_indices_and_one_hot_is_refused():
    fm, qm, x, y = _table_models()
    flat = compare(fm, qm, (x, y), **FAST)
    column = compare(fm, qm, (x, y[:, None]), **FAST)
    assert column.metric == flat.metric and column.slices == flat.slices
    assert column.changed_predictions == flat.changed_predictions
    with pytest.raises(ValueError, match=r"labels must be class indices of shape \[N\]"):
        compare(fm, qm, (x, nn.functional.one_hot(y, 4)), **FAST)


def test_numpy_and_list_pairs_are_inputs_and_labels():
    fm, qm, x, y = _table_models()
    ref = compare(fm, qm, (x, y), **FAST)
    for data in ((x.numpy(), y.numpy()), (x, y.tolist()), (x.tolist(), y.tolist())):
        r = compare(fm, qm, data, **FAST)
        assert r.n_samples == len(x) and r.metric == ref.metric
    # a tuple of two [inputs, labels] lists is two batches, not a pair
    batches = ([x[:100], y[:100]], [x[100:], y[100:]])
    assert compare(fm, qm, batches, **FAST).metric == ref.metric
    with pytest.raises(ValueError, match="inputs have 200 samples and labels 199"):
        compare(fm, qm, (x.numpy(), y[:-1].tolist()), **FAST)


class Scratch(nn.Module):
    """Holds `chunks` temporaries of 1 MiB per sample at once in every call: a known
    inference peak. Defined at module level so that compare's measuring process loads it."""

    def __init__(self, chunks, probe=None):
        super().__init__()
        self.fc = nn.Linear(1, 4)
        self.chunks, self.probe = chunks, probe

    def forward(self, x):
        if self.probe is not None:  # where and how it runs
            with open(self.probe, "a") as f:
                f.write(json.dumps([os.getpid(), torch.get_num_threads(),
                                    int8kit.__file__]) + "\n")
        tmp = [torch.ones(len(x), 1 << 18) for _ in range(self.chunks)]  # written
        return self.fc(x) + sum(float(t[-1, -1]) for t in tmp) * 0


@pytest.mark.skipif(not RSS_MEASURABLE, reason=RSS_REASON)
def test_peak_memory_is_measured_per_model_in_a_fresh_process(tmp_path):
    # In compare's own process both models have already run: memory they freed stays
    # resident and is reused, so an in-process peak would show no growth at all.
    probe = tmp_path / "calls.jsonl"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = compare(Scratch(4, str(probe)), Scratch(0), torch.randn(16, 1), batch_sizes=(8,),
                    latency_repeats=3)
    finally:
        torch.set_num_threads(threads)
    mib = 2 ** 20
    assert r.memory["float"]["peak_increase_bytes"] >= 28 * mib  # 4 x 8 MiB at batch 8
    assert r.memory["quantized"]["peak_increase_bytes"] < 8 * mib
    assert "fresh process" in r.memory["method"] and "fresh process" in str(r)
    calls = [json.loads(line) for line in probe.read_text().splitlines()]
    child = [c for c in calls if c[0] != os.getpid()]  # one warm-up call, then two
    assert len(child) == 3 and len({c[0] for c in child}) == 1
    assert all(c[1:] == [1, int8kit.__file__] for c in child)  # same threads, same int8kit


def _refuse_to_load():
    raise RuntimeError("not loadable here")


class Unloadable(nn.Sequential):
    """Saves, but fails to load (as a class defined in __main__ does in another process)."""

    def __reduce_ex__(self, protocol):
        return _refuse_to_load, ()


def test_peak_memory_of_a_model_that_cannot_be_reloaded_is_absent_with_a_reason():
    fm = _mlp()
    qm = copy.deepcopy(fm)
    qm.act = lambda t: t  # a lambda attribute: torch.save cannot pickle the model
    r = compare(fm, qm, torch.randn(8, 8), batch_sizes=(2,), latency_repeats=2)
    assert r.memory["quantized"]["peak_rss_bytes"] is None
    assert r.memory["quantized"]["peak_increase_bytes"] is None
    assert any(n.startswith("peak RSS of quantized_model not measured: it cannot be saved")
               for n in r.notes)
    assert r.memory["float"]["peak_rss_bytes"] > 0
    r = compare(Unloadable(*_mlp()), fm, torch.randn(8, 8), batch_sizes=(2,), latency_repeats=2)
    assert r.memory["float"]["peak_rss_bytes"] is None
    assert any(n.startswith("peak RSS of float_model not measured: the measuring process "
                            "failed (RuntimeError: cannot load the model") for n in r.notes)


def test_torchscript_model_gives_model_metrics_and_leaves_no_hook():
    fm, x = _mlp(), torch.randn(16, 8)
    inner = copy.deepcopy(fm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(copy.deepcopy(fm).eval())
        inner[2] = torch.jit.script(inner[2])
    r = compare(fm, scripted, x, batch_sizes=(2,), latency_repeats=2)
    assert r.layers == [] and any("TorchScript" in n for n in r.notes)
    assert math.isinf(r.output["sqnr_db"]) and r.changed_predictions["count"] == 0
    assert r.memory["quantized"]["peak_rss_bytes"] > 0  # saved with torch.jit.save
    # a scripted submodule inside an eager model: hooks already registered are removed
    r = compare(fm, inner, x, **FAST)
    assert r.layers == [] and any("hook could not be registered" in n for n in r.notes)
    assert all(not m._forward_hooks for m in fm.modules())


def test_empty_batch_sizes_skips_latency_and_peak_memory():
    fm = _mlp()
    r = compare(fm, copy.deepcopy(fm), torch.randn(8, 8), batch_sizes=())
    assert r.latency == [] and r.memory["float"]["peak_rss_bytes"] is None
    assert any("batch_sizes is empty" in n for n in r.notes)
    assert r.memory["float"]["weight_bytes"] > 0 and "Latency" not in str(r)


def test_infinite_sqnr_bars_sit_at_the_matching_end_of_the_axis():
    from int8kit.evaluate._plot import sqnr_bars
    lengths, colours = sqnr_bars([-math.inf, -5.0, 25.0, 40.0, math.inf])
    assert lengths[1:4] == [-5.0, 25.0, 40.0]
    assert lengths[0] < -5.0 and lengths[4] > 40.0
    assert colours == ["tab:red", "tab:red", "tab:orange", "tab:green", "tab:green"]
    lengths, _ = sqnr_bars([-math.inf, math.inf])  # no finite value: still both ends
    assert lengths[0] < 0 < lengths[1]


def test_plot_draws_a_layer_with_no_signal_as_the_worst(tmp_path, monkeypatch):
    import matplotlib.axes
    fm = nn.Sequential(nn.Linear(8, 4))
    qm = copy.deepcopy(fm)
    with torch.no_grad():
        fm[0].weight.zero_()
        fm[0].bias.zero_()  # the float output is all zeros, the "quantized" one is not
    r = compare(fm, qm, torch.randn(16, 8), **FAST)
    assert r.layers[0].sqnr_db == -math.inf
    drawn = {}
    real_barh = matplotlib.axes.Axes.barh

    def spy(self, y, width, *args, **kwargs):
        drawn.update(width=list(width), color=kwargs.get("color"))
        return real_barh(self, y, width, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", spy)
    r.plot(tmp_path)
    assert drawn["width"][0] < 0 and drawn["color"] == ["tab:red"]


def test_lazy_model_is_refused_and_left_uninitialized():
    fm, qm = nn.Sequential(nn.LazyLinear(4)), _mlp()
    with pytest.raises(ValueError, match=r"float_model has uninitialized lazy parameters"):
        compare(fm, qm, torch.randn(8, 8), **FAST)
    assert fm[0].has_uninitialized_params()  # compare would materialise it under
    # inference_mode: an inference-tensor weight that could never be trained
