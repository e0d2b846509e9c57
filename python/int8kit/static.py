"""Static post-training quantization: prepare -> calibrate -> convert.

    prepared = int8kit.prepare(model, config)        # a fused copy with input observers
    int8kit.calibrate(prepared, loader)              # or just run data through it
    qmodel = int8kit.convert(prepared)               # static int8 modules, report attached
    qmodel = int8kit.quantize_static(model, data)    # all three

The user's model is never modified: prepare works on a deep copy, and convert builds every
replacement on another copy before swapping anything in, so a failure leaves both the
model and the prepared copy as they were.

Where int8kit layers follow each other inside an nn.Sequential, linked only by operations
that commute with quantization (ReLU, MaxPool2d, Flatten, Identity, Dropout at eval), the
container becomes a QuantSequential that hands the uint8 activation from one layer to the
next: the producer requantizes its output straight to the consumer's calibrated input
parameters in its epilogue, so no float tensor is materialized between them. While any of
its layers has a forward hook or pre-hook, it runs them one by one, as nn.Sequential does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dynamic import _HOOK_DICTS, ConversionReport, LayerReport, _module_bytes
from .fusion import ConvReLU2d, LinearBN1d, LinearReLU, find_fusable, fuse_modules
from .nn._base import NotConvertibleError, use_custom_op
from .nn.static import STATIC_MODULES, StaticQuantConv2d, StaticQuantLinear
from .qconfig import QuantConfig

_OBSERVER = "int8kit_input_observer"
_QCONFIG = "_int8kit_qconfig"
_FUSED_HOOKS = "_int8kit_fused_hooks"
# Hooks a converted layer does not take over, as in quantize_dynamic: int8 layers have no
# gradient, and their state_dict holds other entries.
_OTHER_HOOKS = ("_backward_pre_hooks", "_backward_hooks", "_state_dict_pre_hooks",
                "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
_module = torch.nn.modules.module  # holds torch's global module hooks


def _forward_hooked(mod: nn.Module) -> bool:
    return bool(mod._forward_hooks or mod._forward_pre_hooks)


def _float_layer(mod: nn.Module):
    """(float conv/linear, relu fused, the float types it stands for) or None."""
    t = type(mod)
    if t is nn.Linear or t is LinearBN1d:
        return mod, False, (nn.Linear,)
    if t is LinearReLU:
        return mod.linear, True, (nn.Linear,)
    if t is nn.Conv2d:
        return mod, False, (nn.Conv2d,)
    if t is ConvReLU2d:
        return mod.conv, True, (nn.Conv2d,)
    return None


def _observe_input(module, args, kwargs):
    """Forward pre-hook (with kwargs) of a prepared layer: show its input to its observer.
    The input may come by keyword: nn.Linear and nn.Conv2d call it `input`."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"layer {getattr(module, _OBSERVER).name!r}: expected a tensor input")
    getattr(module, _OBSERVER)(x)


# ------------------------------------------------------------------------------ prepare


def prepare(model: nn.Module, config: QuantConfig | None = None, *, fuse: bool = True,
            fuse_groups: list[list[str]] | None = None) -> nn.Module:
    """A copy of `model` (in eval mode) with BN/ReLU fused and an input observer on every
    Linear / Conv2d that `config` quantizes. Run calibration data through it, then convert.

    fuse_groups: explicit fusion groups (lists of module names, e.g. for modules outside an
    nn.Sequential) used instead of the patterns found in every nn.Sequential.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if config is None:
        config = QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError("config must be an int8kit.QuantConfig or None, "
                        f"got {type(config).__name__}")
    # remove_duplicate=False: a module used in two places answers to both names.
    config.check_names(n for n, _ in model.named_modules(remove_duplicate=False))
    work = copy.deepcopy(model).eval()
    fused_hooks = []  # modules whose forward hooks fusion drops (they become nn.Identity)
    if fuse:
        groups = find_fusable(work) if fuse_groups is None else fuse_groups
        before = dict(work.named_modules(remove_duplicate=False))
        work = fuse_modules(work, groups, inplace=True)
        fused_hooks = [n for g in groups for n in g[1:] if _forward_hooked(before[n])]
    skipped, fused = [], []
    for name, mod in list(work.named_modules()):
        hit = _float_layer(mod)
        if hit is None or any(name.startswith(f + ".") for f in fused):
            continue  # not a layer, or the conv/linear inside a fused one
        if hit[0] is not mod:
            fused.append(name)
        qconfig = config.qconfig_for(name, mod, hit[2])
        if qconfig is None:
            skipped.append((name, type(mod).__name__, "qconfig is None (kept in float)"))
            continue
        obs = qconfig.activation()
        obs.name = name
        setattr(mod, _OBSERVER, obs)
        setattr(mod, _QCONFIG, qconfig)
        mod.register_forward_pre_hook(_observe_input, with_kwargs=True)
    work._int8kit_prepare_skips = skipped
    setattr(work, _FUSED_HOOKS, fused_hooks)
    return work


def calibrate(prepared: nn.Module, data, *, progress: bool = True,
              max_batches: int | None = None) -> nn.Module:
    """Runs calibration data through a prepared model (no gradients), with a progress bar.

    data: a tensor (one batch), or an iterable (e.g. a DataLoader) of tensors or of
    (input, target, ...) tuples, whose first element is fed to the model.
    """
    if getattr(prepared, "_int8kit_prepare_skips", None) is None:
        raise TypeError("prepared must be a model returned by int8kit.prepare")
    if isinstance(data, torch.Tensor):
        data = [data]
    if not isinstance(data, Iterable):
        raise TypeError("data must be a tensor or an iterable of batches, "
                        f"got {type(data).__name__}")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be None or a positive int, got {max_batches!r}")
    from tqdm.auto import tqdm

    try:
        total = len(data)
    except TypeError:
        total = None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    n = 0
    with torch.no_grad():
        for batch in tqdm(data, total=total, desc="int8kit calibration", unit="batch",
                          disable=not progress, leave=False):
            if max_batches is not None and n >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if isinstance(x, torch.Tensor) and x.numel() == 0:
                raise ValueError(f"data: batch {n} is empty (shape {tuple(x.shape)})")
            prepared(x)
            n += 1
    if n == 0:
        raise ValueError("data is empty: calibration needs at least one batch")
    return prepared


# ------------------------------------------------------------------------------ convert


@dataclass
class StaticLayerReport(LayerReport):
    """A ConversionReport row plus the calibrated input range and parameters."""

    input_range: tuple[float, float] | None = None   # what the observer chose
    input_scale: float | None = None
    input_zero_point: int | None = None


def _float_bytes(mod: nn.Module) -> int:
    """Bytes of parameters and buffers, observers excluded."""
    seen = {}
    for n, t in list(mod.named_parameters()) + list(mod.named_buffers()):
        if _OBSERVER not in n and t is not None:
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def _build(name: str, mod: nn.Module) -> tuple[nn.Module | None, StaticLayerReport]:
    """The static replacement of one prepared layer (None if skipped) and its report row."""
    float_mod, relu, _ = _float_layer(mod)
    obs = getattr(mod, _OBSERVER)
    row = StaticLayerReport(name, type(mod).__name__, False, "", _float_bytes(float_mod), 0)
    if not obs.calibrated:
        row.detail = "never ran during calibration, or only on empty tensors (no input range)"
        return None, row
    wobs = getattr(mod, _QCONFIG).weight()
    wobs.name = name
    try:
        lo, hi = obs.calculate_range()  # e.g. a range too wide for a float32 scale raises
        scale, zp = obs.calculate_qparams()
        row.input_range = (float(lo), float(hi))
        row.input_scale, row.input_zero_point = float(scale), int(zp)
        w = float_mod.weight.detach()
        if not bool(torch.isfinite(w).all()):  # the observer would blame calibration data
            raise ValueError("weight contains NaN or Inf")
        wobs(w)
        wq = wobs.calculate_qparams()
        cls = StaticQuantLinear if isinstance(float_mod, nn.Linear) else StaticQuantConv2d
        new = cls.from_float(float_mod, scale, zp, weight_qparams=wq, relu=relu)
    except (NotConvertibleError, ValueError) as e:
        row.detail = str(e) if row.input_range else f"input range: {e}"
        return None, row
    row.converted = True
    row.bytes_after = new.weight_bytes()
    wscheme = "per-channel" if wq.scale.numel() > 1 else "per-tensor"
    row.detail = (f"int8 {wscheme} weights ({type(wobs).__name__}); uint8 input "
                  f"[{float(lo):.4g}, {float(hi):.4g}] ({type(obs).__name__}: "
                  f"scale={float(scale):.4g}, zp={int(zp)})" + ("; relu fused" if relu else ""))
    return new, row


def _strip(mod: nn.Module) -> None:
    """Removes int8kit's observer and hook from a layer that stays in float."""
    for key, hook in list(mod._forward_pre_hooks.items()):
        if hook is _observe_input:
            del mod._forward_pre_hooks[key]
            mod._forward_pre_hooks_with_kwargs.pop(key, None)
    for attr in (_OBSERVER, _QCONFIG):
        if hasattr(mod, attr):
            delattr(mod, attr)


def _take_hooks(new: nn.Module, olds: list[nn.Module]) -> tuple[bool, bool]:
    """Gives `new` the forward hooks and pre-hooks of the modules it replaces (a fused
    layer and its float conv/linear), as quantize_dynamic does. Returns whether there were
    any, and whether the olds had other hooks, which are not taken."""
    for attr in _HOOK_DICTS:
        hooks = type(getattr(new, attr))()
        for old in olds:
            hooks.update(getattr(old, attr, {}))
        setattr(new, attr, hooks)
    return _forward_hooked(new), any(getattr(m, a, None) for m in olds for a in _OTHER_HOOKS)


def _hook_notes(kept: list[str], other: list[str], fused: list[str], model) -> list[str]:
    """What happened to the user's hooks, for the report."""
    notes = []
    if kept:
        notes.append(f"forward hooks and pre-hooks kept on {', '.join(kept)}")
    if other:
        notes.append("backward and state_dict hooks not kept (as in quantize_dynamic) on "
                     + ", ".join(other))
    if fused:
        notes.append(f"forward hooks of fused-away modules dropped: {', '.join(fused)} "
                     "(prepare with fuse=False keeps them)")
    if any(isinstance(m, QuantSequential) and any(map(_forward_hooked, m))
           for m in model.modules()):
        notes.append("QuantSequential layers with forward hooks or pre-hooks run one by one "
                     "through their forward (no uint8 hand-off) while the hooks are there")
    return notes


def convert(prepared: nn.Module, *, handoff: bool = True, strict: bool = False) -> nn.Module:
    """A new model with every calibrated layer of `prepared` replaced by its static int8
    module; `prepared` is not modified. handoff=False keeps float tensors between layers
    (for comparison: the result is the same). strict: raise on a layer that cannot convert.
    The result carries `int8kit_report`, a ConversionReport with StaticLayerReport rows."""
    skips = getattr(prepared, "_int8kit_prepare_skips", None)
    if skips is None:
        raise TypeError("prepared must be a model returned by int8kit.prepare (and calibrated)")
    work = copy.deepcopy(prepared)
    report = ConversionReport(model_bytes_before=_float_bytes(work))
    for name, kind, reason in skips:
        report.layers.append(StaticLayerReport(name, kind, False, reason, 0, 0))
    new_for: dict[int, nn.Module] = {}
    for name, mod in work.named_modules():
        if not hasattr(mod, _OBSERVER) or id(mod) in new_for:
            continue
        new, row = _build(name, mod)
        report.layers.append(row)
        if new is None:
            if strict:
                raise NotConvertibleError(f"cannot convert {name or '(root)'}: {row.detail}")
            row.bytes_after = row.bytes_before
        else:
            new_for[id(mod)] = new
    # Commit: nothing below fails on a well-formed module tree.
    kept, other = [], []
    for name, mod in work.named_modules():
        if hasattr(mod, _OBSERVER):
            _strip(mod)
            if id(mod) in new_for:
                hooked, dropped = _take_hooks(new_for[id(mod)], [mod, _float_layer(mod)[0]])
                if hooked:
                    kept.append(name or "(root)")
                if dropped:
                    other.append(name or "(root)")
    for parent in list(work.modules()):
        for key, child in parent._modules.items():
            if child is not None and id(child) in new_for:
                parent._modules[key] = new_for[id(child)]
    work = new_for.get(id(work), work)
    if handoff:
        work = _chain(work, report)
    report.notes += _hook_notes(kept, other, getattr(prepared, _FUSED_HOOKS, []), work)
    for attr in ("_int8kit_prepare_skips", _FUSED_HOOKS, "int8kit_report"):
        work.__dict__.pop(attr, None)
    report.model_bytes_after = _module_bytes(work)
    work.int8kit_report = report
    return work


def quantize_static(model: nn.Module, calibration_data, config: QuantConfig | None = None, *,
                    progress: bool = False, handoff: bool = True, **prepare_options) -> nn.Module:
    """prepare + calibrate + convert; `model` is not modified."""
    prepared = prepare(model, config, **prepare_options)
    calibrate(prepared, calibration_data, progress=progress)
    return convert(prepared, handoff=handoff)


# ---------------------------------------------------------------------- uint8 hand-off


def _max_pool_u8(q: torch.Tensor, mod: nn.MaxPool2d) -> torch.Tensor:
    """max_pool2d of a uint8 tensor, kept in the channels_last layout the conv kernels
    produce. torch's NCHW uint8 kernel is scalar (a .contiguous() copy made the digits
    CNN's two pools 1.7 ms of its 2.1 ms at batch 64), and its vectorized channels_last
    kernel indexes an H*W plane in the tensor's own dtype (uint8 raises above 127). So
    pool in the narrowest dtype that can index the plane: exact, values are integers."""
    plane = q.shape[-2] * q.shape[-1]
    dtype = torch.uint8 if plane <= 127 else torch.int16 if plane <= 32767 else torch.float32
    y = F.max_pool2d(q if dtype is torch.uint8 else q.to(dtype), mod.kernel_size, mod.stride,
                     mod.padding, mod.dilation, mod.ceil_mode)
    return y if dtype is torch.uint8 else y.to(torch.uint8)


def _u8_op(mod: nn.Module):
    """fn(q, zero_point) computing `mod` exactly on uint8 activations, or None.

    Exact because each op commutes with the monotonic quantizer: quantize(relu(y)) =
    max(quantize(y), zp) (0.0 quantizes to zp exactly), max pooling picks the same element
    (padding is the lowest value in either form), reshapes move values unchanged."""
    t = type(mod)
    if t is nn.ReLU:
        return lambda q, zp: q.clamp_min(zp)
    if t is nn.MaxPool2d and not mod.return_indices:
        return lambda q, zp: _max_pool_u8(q, mod)
    if t in (nn.Flatten, nn.Identity) or (t in (nn.Dropout, nn.Dropout2d) and not mod.training):
        return lambda q, zp: mod(q)
    return None


def _links(mods: list[nn.Module]) -> dict[int, int]:
    """producer index -> consumer index for static layers linked by exact uint8 ops."""
    links = {}
    for i, m in enumerate(mods):
        if not isinstance(m, STATIC_MODULES):
            continue
        j = i + 1
        while j < len(mods) and not isinstance(mods[j], STATIC_MODULES) and _u8_op(mods[j]):
            j += 1
        if j < len(mods) and isinstance(mods[j], STATIC_MODULES):
            links[i] = j
    return links


def _plan(mods: list[nn.Module]) -> list[tuple]:
    """QuantSequential's steps for these children, worked out once: ("float", m),
    ("u8", fn) for an exact uint8 op inside a chain (no step for ops that return their
    input: Identity, Dropout in eval), or ("static", m, next static layer or None,
    whether m's input arrives as uint8)."""
    links, steps, in_chain = _links(mods), [], False
    for i, m in enumerate(mods):
        if isinstance(m, STATIC_MODULES):
            nxt = mods[links[i]] if i in links else None
            steps.append(("static", m, nxt, in_chain))
            in_chain = nxt is not None
        elif not in_chain:
            steps.append(("float", m))
        elif type(m) is not nn.Identity and type(m) not in (nn.Dropout, nn.Dropout2d):
            steps.append(("u8", _u8_op(m)))
    return steps


def _hooked(mods) -> bool:
    """Would calling any of `mods` run a forward hook or pre-hook (its own or global)?"""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    for m in mods:
        if m._forward_hooks or m._forward_pre_hooks:
            return True
    return False


class QuantSequential(nn.Sequential):
    """nn.Sequential (same children, same state_dict keys) that passes uint8 activations
    between linked int8kit layers instead of float tensors. Float in, float out.

    While any child has a forward hook or pre-hook (or torch has global ones), the children
    run one by one through their __call__, as in nn.Sequential: the hooks see, and may
    change, the float values; without a pre-hook changing them the output is the same."""

    def forward(self, x):
        mods = self._modules.values()
        # Traced: layer by layer, each through its custom op. Hooked: see the docstring.
        if use_custom_op(x) or _hooked(mods):
            return super().forward(x)
        # The plan changes only if the children or their modes do (Dropout links only in
        # eval); a few microseconds of Python per layer matter on small inputs.
        key = (tuple(map(id, mods)), tuple(m.training for m in mods))
        cached = self.__dict__.get("_plan_cache")
        if cached is None or cached[0] != key:
            cached = (key, _plan(list(mods)))
            self.__dict__["_plan_cache"] = cached
        q = zp = None  # the uint8 activation and its zero point, while inside a chain
        for step in cached[1]:
            kind = step[0]
            if kind == "u8":
                q = step[1](q, zp)
            elif kind == "float":
                x = step[1](x)
            else:
                _, m, nxt, u8_in = step
                out = None if nxt is None else nxt.input_params()
                if u8_in:
                    y = m.forward_quantized(q, out=out)
                else:  # quantize + layer in one native call
                    y = m.forward_float(x, out)
                if nxt is None:
                    x, q = y.to(x.dtype), None
                else:
                    q, zp = y, out[1]
        return x

    def __getstate__(self):
        # The plan holds closures (not picklable) and module ids (meaningless in a copy):
        # torch.save and deepcopy leave it out, and the next forward rebuilds it.
        state = super().__getstate__()
        state.pop("_plan_cache", None)
        return state


def _chain(model: nn.Module, report: ConversionReport) -> nn.Module:
    """Turns every nn.Sequential with at least one producer -> consumer link into a
    QuantSequential in place: the same module with a new forward, so it keeps its
    children, hooks, attributes and sharing."""
    for name, seq in list(model.named_modules()):
        if type(seq) is not nn.Sequential:
            continue
        links = _links(list(seq._modules.values()))
        if links:
            names = list(seq._modules)
            report.notes.append("uint8 hand-off: " + ", ".join(
                f"{names[i]} -> {names[j]}" for i, j in links.items())
                + f" (in {name or '(root)'})")
            seq.__class__ = QuantSequential
    return model
