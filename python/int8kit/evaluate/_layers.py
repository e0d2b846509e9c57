"""Per-layer comparison of float and quantized activations through forward hooks.

Layers are matched by qualified name: int8kit (and torch.ao) swap a float module for a
quantized one at the same name. A float run records each matched layer's outputs; the
quantized run on the same batch compares against them as it goes. Hooks are removed in a
`finally`, so the models are left as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn.attention import QuantMultiheadAttention

# Pure pass-throughs in eval mode: their output equals their input, so listing them would
# only repeat the previous layer.
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout)


@dataclass
class LayerStat:
    """Float vs quantized output of one layer, accumulated over every call and sample."""

    name: str
    float_type: str
    quant_type: str
    sqnr_db: float = float("nan")
    cosine: float = float("nan")
    max_abs_err: float = 0.0
    numel: int = 0
    calls: int = 0
    note: str = ""
    # running sums (float64) over all calls
    _ref2: float = field(default=0.0, repr=False)
    _err2: float = field(default=0.0, repr=False)
    _dot: float = field(default=0.0, repr=False)
    _q2: float = field(default=0.0, repr=False)

    def add(self, ref: torch.Tensor, q: torch.Tensor) -> None:
        if ref.shape != q.shape:
            self.note = f"shape mismatch: float {tuple(ref.shape)} vs quantized {tuple(q.shape)}"
            return
        r, d = ref.double(), q.double()
        self._ref2 += float((r * r).sum())
        self._err2 += float(((r - d) ** 2).sum())
        self._dot += float((r * d).sum())
        self._q2 += float((d * d).sum())
        if r.numel():
            self.max_abs_err = max(self.max_abs_err, float((r - d).abs().max()))
        self.numel += r.numel()
        self.calls += 1

    def finish(self) -> "LayerStat":
        if self.calls == 0:  # nothing compared: no number rather than a made-up one
            self.sqnr_db = self.cosine = self.max_abs_err = float("nan")
            return self
        self.sqnr_db = sqnr_db_from_sums(self._ref2, self._err2)
        self.cosine = cosine_from_sums(self._dot, self._ref2, self._q2)
        return self

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "float_type", "quant_type", "sqnr_db",
                                               "cosine", "max_abs_err", "numel", "calls",
                                               "note")}


def sqnr_db_from_sums(ref2: float, err2: float) -> float:
    """10*log10(sum ref^2 / sum err^2): +inf when the outputs are equal."""
    if err2 == 0.0:
        return math.inf
    if ref2 == 0.0:
        return -math.inf
    return 10.0 * math.log10(ref2 / err2)


def cosine_from_sums(dot: float, a2: float, b2: float) -> float:
    if a2 == 0.0 and b2 == 0.0:
        return 1.0
    if a2 == 0.0 or b2 == 0.0:
        return 0.0
    return dot / math.sqrt(a2 * b2)


def as_float(out) -> torch.Tensor | None:
    """The comparable tensor of a module output: the first tensor of a tuple, quantized
    tensors (torch.ao) dequantized; None when there is no floating-point tensor."""
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor):
        return None
    if out.is_quantized:
        out = out.dequantize()
    return out.detach().float() if out.is_floating_point() else None


def type_name(m: nn.Module) -> str:
    """Class name, prefixed 'ao.' for torch.ao's quantized modules (whose names repeat
    nn's: Linear, Conv2d)."""
    name = type(m).__name__
    return "ao." + name if type(m).__module__.startswith("torch.ao.") else name


# Compared as one layer, not through their children: nn.MultiheadAttention never calls its
# out_proj module (it reads the weight), and its int8 form has four projections instead.
_ATOMIC = (nn.MultiheadAttention, QuantMultiheadAttention)


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    out, atomic = {}, []
    for n, m in model.named_modules():
        if not n or any(n.startswith(a + ".") for a in atomic):
            continue
        if isinstance(m, _ATOMIC):
            atomic.append(n)
            out[n] = m
        elif not any(True for _ in m.children()):
            out[n] = m
    return out


def _is_fused_away(f: nn.Module, q: nn.Module | None) -> bool:
    return isinstance(q, nn.Identity) and not isinstance(f, nn.Identity)


def _has_children(m: nn.Module) -> bool:
    return any(True for _ in m.children())


def _same_kind(f: nn.Module, q: nn.Module | None) -> bool:
    """q is f's kind by class name: Linear -> Linear, QuantLinear, StaticQuantLinear."""
    return q is not None and type(f).__name__ in type(q).__name__


def _best_prefix(names: list[str], fmods: dict, qmods: dict) -> str:
    """The quantized model may wrap the float one (torch.ao's QuantStub, model, DeQuantStub
    pattern): the prefix under which most float layers reappear as the same kind of module
    ('' unless one explains most layers). nn.Identity is no evidence: wrappers' stubs are often Identity too."""
    def score(p):
        return sum(_same_kind(fmods[n], qmods.get(p + n)) for n in names if n in fmods)

    candidates = [n + "." for n, m in qmods.items() if n and _has_children(m)]
    best = max(candidates, key=score, default="")
    # A prefix must explain most layers, or a fused submodule (ConvReLU2d's own "0", "1"
    # children) could capture the match.
    return best if best and score(best) > max(score(""), len(names) / 2) else ""


def match_layers(float_model: nn.Module, quant_model: nn.Module, layers="auto"):
    """Returns (pairs, unmatched, prefix). pairs: [(float name, quantized name, label,
    group head)]; a fused group (conv, then bn/relu replaced by nn.Identity, as torch.ao
    and int8kit fuse) is compared at its last member, whose output is the whole group's in
    both models. unmatched: {"float_only": [...], "quantized_only": [...]}. prefix: where
    the float model's names sit inside the quantized model ('' unless it wraps it)."""
    fmods = dict(float_model.named_modules())
    qmods = dict(quant_model.named_modules())
    if layers is None:
        return [], {"float_only": [], "quantized_only": []}, ""
    if layers == "auto":
        names = [n for n, m in _leaves(float_model).items()]
    else:
        if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
            raise TypeError("layers must be 'auto', None, or a list of module names")
        names = list(layers)
    prefix = _best_prefix(names, fmods, qmods)
    q = {n: qmods.get(prefix + n) for n in names}
    if layers == "auto":
        names = [n for n in names if not isinstance(fmods[n], _PASS_THROUGH)
                 or _is_fused_away(fmods[n], q[n])]
    else:
        bad = [n for n in names if n not in fmods or q[n] is None]
        if bad:
            raise ValueError(f"layers: no module named {bad} in both models")
    pairs, float_only = [], []
    i = 0
    while i < len(names):
        n = names[i]
        if q[n] is None:
            float_only.append(n)
            i += 1
            continue
        group = [n]
        while (i + len(group) < len(names) and q[names[i + len(group)]] is not None
               and _is_fused_away(fmods[names[i + len(group)]], q[names[i + len(group)]])):
            group.append(names[i + len(group)])
        label = n if len(group) == 1 else f"{n} (fused with {', '.join(group[1:])})"
        pairs.append((group[-1], prefix + group[-1], label, n))
        i += len(group)
    matched = {prefix + p[3] for p in pairs} | {p[1] for p in pairs}
    # quantized-only: leaves absent from the float model and not inside a matched module
    # (torch.ao's fc._packed_params is part of fc), e.g. QuantStub / DeQuantStub.
    fnames = {prefix + n for n in fmods}
    quant_only = [n for n in _leaves(quant_model) if n not in fnames
                  and not any(n.startswith(m + ".") for m in matched)]
    return pairs, {"float_only": float_only, "quantized_only": quant_only}, prefix


class LayerRecorder:
    """Hooks on both models: record float outputs, then compare the quantized ones."""

    def __init__(self, float_model, quant_model, pairs):
        fmods = dict(float_model.named_modules())
        qmods = dict(quant_model.named_modules())
        self.pairs = pairs
        self.stats = {fname: LayerStat(label, type_name(fmods[head]),
                                       type_name(qmods[qname[:len(qname) - len(fname)] + head]))
                      for fname, qname, label, head in pairs}
        self._ref: dict[str, list] = {}
        self._handles = []
        try:
            for fname, qname, _, _ in pairs:
                # A quantized layer with a ReLU in its epilogue (quantize_dynamic fuses a
                # Transformer layer's functional ReLU into linear1) is compared after it.
                relu = type(fmods[fname]) in (nn.Linear, nn.Conv2d) and getattr(
                    qmods[qname], "relu", False)
                self._handles.append(
                    fmods[fname].register_forward_hook(self._float_hook(fname, relu)))
                self._handles.append(
                    qmods[qname].register_forward_hook(self._quant_hook(fname)))
        except BaseException:  # a module refused its hook (TorchScript): leave none behind
            self.remove()
            raise

    def _float_hook(self, key, relu=False):
        def hook(_m, _inp, out):
            # A copy: the reference waits for the quantized pass, and an in-place op later
            # in the float model (ReLU6(inplace=True) after a conv) would rewrite it.
            ref = as_float(out)
            if ref is not None:
                ref = torch.relu(ref) if relu else ref.clone()
            self._ref.setdefault(key, []).append(ref)
        return hook

    def _quant_hook(self, key):
        def hook(_m, _inp, out):
            refs = self._ref.get(key)
            st = self.stats[key]
            if not refs:  # called more often in the quantized model than in the float one
                st.note = st.note or "called a different number of times in the two models"
                return
            ref, q = refs.pop(0), as_float(out)
            if ref is None:
                st.note = st.note or "float output is not a floating-point tensor"
                return
            if q is None:
                st.note = st.note or ("no float value to compare: quantized output is "
                                      f"{getattr(out, 'dtype', type(out).__name__)}")
                return
            st.add(ref, q)
        return hook

    def end_batch(self) -> None:
        for key, left in self._ref.items():
            st = self.stats[key]
            if left and not st.note:
                st.note = ("never called through forward() in the quantized model"
                           if st.calls == 0 else
                           "called a different number of times in the two models")
        self._ref.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._ref.clear()

    def results(self) -> list[LayerStat]:
        """Worst SQNR first; layers that never produced a comparison go last."""
        out = [s.finish() for s in self.stats.values()]
        return sorted(out, key=lambda s: (s.calls == 0, s.sqnr_db if not math.isnan(s.sqnr_db)
                                          else math.inf))
