"""compare(): evaluate a quantized model against its float original, honestly.

    report = int8kit.compare(float_model, quantized_model, (x, y))
    print(report); report.to_json("report.json"); report.plot("plots/")

Both models run in eval mode under torch.inference_mode; their training flags are restored
afterwards and every hook is removed, so neither model is modified. Peak memory is measured
in a fresh process per model (see _memory).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import torch
from torch import nn

from . import _latency, _memory
from ._data import gather
from ._layers import LayerRecorder, LayerStat, as_float, match_layers
from ._report import SECTIONS, ComparisonReport

__all__ = ["compare", "ComparisonReport", "SECTIONS"]

_PEAK_KEYS = ("peak_rss_bytes", "rss_before_bytes", "peak_increase_bytes")


def _check_int(value, name: str, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_positive_ints(values, name: str) -> tuple[int, ...]:
    if isinstance(values, int):
        values = (values,)
    try:
        vals = tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of positive ints, got {values!r}") from None
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in vals):
        raise ValueError(f"{name} must contain positive ints only, got {values!r}")
    return vals


def _check_materialized(model: nn.Module, name: str) -> None:
    """Lazy modules would materialise inside compare's inference_mode: the model would be
    changed, and its new weights could never get gradients."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    lazy = [n for n, t in tensors if nn.parameter.is_lazy(t)]
    if lazy:
        raise ValueError(f"{name} has uninitialized lazy parameters {lazy}: run it once on an "
                         "input before compare (which never changes the models)")


def _class_labels(y: torch.Tensor | None) -> torch.Tensor | None:
    """Labels for metric='accuracy': class indices [N]; [N, 1] is read as [N]."""
    if y is None or y.dim() == 1:
        return y
    if y.dim() == 2 and y.shape[1] == 1:
        return y[:, 0]
    raise ValueError(f"labels must be class indices of shape [N] or [N, 1] for "
                     f"metric='accuracy', got shape {tuple(y.shape)} (one-hot labels: pass "
                     "labels.argmax(1))")


def _call(model: nn.Module, x: torch.Tensor, name: str):
    try:
        return model(x)
    except Exception as e:
        raise RuntimeError(f"{name} failed on inputs of shape {tuple(x.shape)}: "
                           f"{type(e).__name__}: {e}") from e


def _predictions(out: torch.Tensor) -> torch.Tensor | None:
    """Class predictions from scores [N, C] (C >= 2); None for other outputs."""
    return out.argmax(dim=-1) if out.dim() == 2 and out.shape[1] >= 2 else None


def _metric_fn(metric) -> Callable:
    if callable(metric):
        return metric
    if metric != "accuracy":
        raise ValueError(f"metric must be 'accuracy' or a callable(outputs, labels) -> float, "
                         f"got {metric!r}")

    def accuracy(out, y):
        pred = _predictions(out)
        if pred is None:
            raise ValueError("metric='accuracy' needs class scores of shape [N, C] with "
                             f"C >= 2, got outputs of shape {tuple(out.shape)}; pass "
                             "metric=callable(outputs, labels) instead")
        return float((pred == y.long()).double().mean()) if len(y) else float("nan")
    return accuracy


def _slice_masks(slices, x, y, n) -> dict[str, torch.Tensor]:
    if slices is None:
        if y is None or y.is_floating_point() or y.dim() != 1:
            return {}
        return {f"class {int(c)}": y == c for c in torch.unique(y)}
    if not isinstance(slices, Mapping):
        raise TypeError("slices must be a dict of name -> boolean mask or "
                        f"callable(inputs, labels) -> mask, got {type(slices).__name__}")
    masks = {}
    for name, spec in slices.items():
        mask = spec(x, y) if callable(spec) else spec
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or mask.shape != (n,):
            raise ValueError(f"slices[{name!r}] must be a boolean mask of shape ({n},), got "
                             f"dtype {mask.dtype} and shape {tuple(mask.shape)}")
        masks[str(name)] = mask
    return masks


def _changed(fpred, qpred, y, max_examples: int) -> dict:
    changed = fpred != qpred
    idx = torch.nonzero(changed).flatten()
    labelled = y is not None and not y.is_floating_point() and y.dim() == 1
    pairs = Counter(zip(fpred[idx].tolist(), qpred[idx].tolist()))
    out = {
        "count": int(changed.sum()), "fraction": float(changed.double().mean()),
        "broken": int(((fpred == y) & (qpred != y)).sum()) if labelled else None,
        "fixed": int(((fpred != y) & (qpred == y)).sum()) if labelled else None,
        "transitions": [{"float": a, "quantized": b, "count": c}
                        for (a, b), c in pairs.most_common(10)],
        "examples": [{"index": int(i), "float": int(fpred[i]), "quantized": int(qpred[i]),
                      "label": int(y[i]) if labelled else None}
                     for i in idx[:max_examples].tolist()],
    }
    return out


def _output_stats(fo: torch.Tensor, qo: torch.Tensor) -> dict:
    st = LayerStat("output", "", "")
    st.add(fo, qo)
    st.finish()
    return {"sqnr_db": st.sqnr_db, "cosine": st.cosine, "max_abs_err": st.max_abs_err}


def compare(float_model: nn.Module, quantized_model: nn.Module, data, *, labels=None,
            metric="accuracy", slices=None, batch_sizes=(1, 8, 32), latency_repeats: int = 50,
            layers="auto", eval_batch_size: int = 64, max_examples: int = 10,
            measure_memory: bool = True) -> ComparisonReport:
    """Compares `quantized_model` with `float_model` on `data`.

    data: a tensor of inputs, an (inputs, labels) tuple, or an iterable of batches (tensors
      or (inputs, labels) pairs, e.g. a DataLoader). Models take one tensor.
    metric: 'accuracy' (argmax of [N, C] scores vs integer labels) or a callable
      (outputs, labels) -> float, where higher is better (slices are sorted by its drop).
    slices: name -> boolean mask [N] or callable(inputs, labels) -> mask; default: one slice
      per class when labels are integer class indices.
    layers: 'auto' (every float leaf module also present, by name, in the quantized model),
      a list of module names, or None to skip the per-layer comparison.
    batch_sizes, latency_repeats: latency is timed at each batch size with that many calls
      per model, interleaved; batch_sizes=() skips latency and peak memory.
    measure_memory: also measure peak RSS during inference at the largest batch size, each
      model in a fresh Python process (a model that cannot be saved gets a note instead).
    """
    for arg, m in (("float_model", float_model), ("quantized_model", quantized_model)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{arg} must be an nn.Module, got {type(m).__name__}")
        _check_materialized(m, arg)
    if float_model is quantized_model:
        raise ValueError("float_model and quantized_model are the same object")
    metric_fn = _metric_fn(metric)
    batch_sizes = _check_positive_ints(batch_sizes, "batch_sizes")
    latency_repeats = _check_int(latency_repeats, "latency_repeats")
    eval_batch_size = _check_int(eval_batch_size, "eval_batch_size")
    max_examples = _check_int(max_examples, "max_examples", low=0)
    x, y = gather(data, labels)
    if not callable(metric):
        y = _class_labels(y)
    n = x.shape[0]
    masks = _slice_masks(slices, x, y, n)
    notes = []
    scripted = [arg for arg, m in (("float_model", float_model),
                                   ("quantized_model", quantized_model))
                if isinstance(m, torch.jit.ScriptModule)]
    if scripted and layers is not None:
        notes.append(f"per-layer comparison skipped: {scripted[0]} is a TorchScript module, "
                     "which takes no forward hooks")
    pairs, unmatched, prefix = match_layers(float_model, quantized_model,
                                            None if scripted else layers)

    models = (float_model, quantized_model)
    flags = [{m: m.training for m in model.modules()} for model in models]
    try:
        for model in models:
            model.eval()
        with torch.inference_mode():
            try:
                recorder = LayerRecorder(float_model, quantized_model, pairs)
            except Exception as e:  # e.g. a TorchScript submodule; no hook is left behind
                notes.append(f"per-layer comparison skipped: a forward hook could not be "
                             f"registered ({type(e).__name__}: {e})")
                recorder = LayerRecorder(float_model, quantized_model, [])
            fouts, qouts = [], []
            try:
                for i in range(0, n, eval_batch_size):
                    xb = x[i:i + eval_batch_size]
                    fouts.append(as_float(_call(float_model, xb, "float_model")))
                    qouts.append(as_float(_call(quantized_model, xb, "quantized_model")))
                    recorder.end_batch()
            finally:
                recorder.remove()
            layer_stats = recorder.results()
            if fouts[0] is None or qouts[0] is None:
                raise ValueError("the models must return a floating-point tensor "
                                 "(or a tuple whose first element is one)")
            fo, qo = torch.cat(fouts), torch.cat(qouts)
            if fo.shape != qo.shape:
                raise ValueError(f"the models' outputs differ in shape: float "
                                 f"{tuple(fo.shape)} vs quantized {tuple(qo.shape)}")

            metric_result, slice_rows = None, []
            fpred, qpred = _predictions(fo), _predictions(qo)
            if y is not None or callable(metric):
                fm, qm = metric_fn(fo, y), metric_fn(qo, y)
                metric_result = {"float": fm, "quantized": qm, "delta": qm - fm}
                for name, mask in masks.items():
                    k = int(mask.sum())
                    ys = y[mask] if y is not None else None
                    fs = metric_fn(fo[mask], ys) if k else None
                    qs = metric_fn(qo[mask], ys) if k else None
                    slice_rows.append({
                        "name": name, "n": k, "float": fs, "quantized": qs,
                        "delta": None if fs is None else qs - fs,
                        "changed": None if fpred is None else int((fpred != qpred)[mask].sum())})
                slice_rows.sort(key=lambda r: float("inf") if r["delta"] is None else r["delta"])
            else:
                notes.append("no labels: the metric and per-slice results are not computed")
            changed = None if fpred is None else _changed(fpred, qpred, y, max_examples)
            if changed is None:
                notes.append("outputs are not class scores [N, C]: changed predictions are "
                             "not computed")

            run_f = lambda b: float_model(b)  # noqa: E731
            run_q = lambda b: quantized_model(b)  # noqa: E731
            latency = _latency.measure(run_f, run_q, x, batch_sizes, latency_repeats)
            memory = {"float": {"weight_bytes": _memory.weight_bytes(float_model),
                                "state_dict_bytes": _memory.state_dict_bytes(float_model)},
                      "quantized": {"weight_bytes": _memory.weight_bytes(quantized_model),
                                    "state_dict_bytes":
                                        _memory.state_dict_bytes(quantized_model)}}
            qb = memory["quantized"]["weight_bytes"]
            memory["weight_ratio"] = memory["float"]["weight_bytes"] / qb if qb else None
            memory["method"] = "not measured"
            for key in ("float", "quantized"):
                memory[key].update(dict.fromkeys(_PEAK_KEYS))
        if not batch_sizes:
            notes.append("batch_sizes is empty: latency and peak memory were not measured")
        elif measure_memory:
            b = max(batch_sizes)
            peaks = _memory.peak_rss_fresh({"float": float_model, "quantized": quantized_model},
                                           _latency.batch_of(x, b))
            for key, peak in peaks.items():
                if "error" in peak:
                    notes.append(f"peak RSS of {key}_model not measured: {peak['error']}")
                    continue
                memory[key].update({k: peak[k] for k in _PEAK_KEYS})
                memory["method"] = (f"a fresh process per model (saved and reloaded), one "
                                    f"warm-up call on one sample, then two calls at batch {b}: "
                                    f"{peak['method']}")
    finally:
        for saved in flags:
            for m, was_training in saved.items():
                m.training = was_training
    if prefix:
        notes.append(f"the quantized model wraps the float one: its layers were matched "
                     f"under {prefix[:-1]!r}")
    if any(s.calls == 0 for s in layer_stats):
        notes.append("layers with no SQNR were never compared: their quantized module was "
                     "not called through forward() or had no float output")
    notes.append("weight bytes: parameters and buffers; int8kit modules report weight_bytes() "
                 "(what they hold: the packed weight the kernels read, scales, bias); "
                 "torch.ao quantized modules count their int8 weight, qparams and bias "
                 "(fbgemm's internal prepacked copy is not visible and not counted)")
    settings = {"batch_sizes": list(batch_sizes), "latency_repeats": latency_repeats,
                "eval_batch_size": eval_batch_size, "torch_threads": torch.get_num_threads(),
                "layers": layers if layers in ("auto", None) else list(layers)}
    return ComparisonReport(
        metric_name=getattr(metric, "__name__", str(metric)), n_samples=n,
        metric=metric_result, slices=slice_rows, changed_predictions=changed,
        output=_output_stats(fo, qo), layers=layer_stats, unmatched_layers=unmatched,
        latency=latency, memory=memory, notes=notes, settings=settings)
