"""quantize_dynamic: swap float modules for int8kit's dynamic quantized modules.

The conversion runs in two phases so that a failure never leaves a model half-converted:
first every replacement is built (and every skip recorded) without touching the model,
then all swaps are committed at once. With inplace=False (the default) the work is done
on a deep copy and the caller's model is never modified at all.

Adding a module type means registering its quantized class here:
the class needs `from_float(module, **options)` raising NotConvertibleError for modules it
cannot represent (those are reported and skipped), `scheme()` and `weight_bytes()`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .nn import NotConvertibleError, QuantConv2d, QuantLinear, QuantMultiheadAttention

# Float module type (matched exactly, not by isinstance) -> quantized module class.
# quantize_dynamic converts DEFAULT_TYPES by default; nn.Conv2d when the caller asks for it.
DYNAMIC_MODULES: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d,
                                     nn.MultiheadAttention: QuantMultiheadAttention}
DEFAULT_TYPES = (nn.Linear, nn.MultiheadAttention)

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def register_dynamic_module(float_type: type, quant_type: type) -> None:
    """Makes quantize_dynamic convert modules of exactly `float_type` with `quant_type`."""
    if not (isinstance(float_type, type) and issubclass(float_type, nn.Module)):
        raise TypeError(f"float_type must be an nn.Module subclass, got {float_type!r}")
    if not callable(getattr(quant_type, "from_float", None)):
        raise TypeError(f"quant_type must define from_float(module, **options), got {quant_type!r}")
    DYNAMIC_MODULES[float_type] = quant_type


@dataclass
class LayerReport:
    name: str            # qualified module name ("" is the root)
    module_type: str     # the float module's class name
    converted: bool
    detail: str          # the scheme when converted, the reason when skipped
    bytes_before: int    # weight + bias bytes of the float module
    bytes_after: int     # bytes of the quantized module, packed weights included
    aliases: list[str] = field(default_factory=list)  # other names of the same (shared) module


@dataclass
class ConversionReport:
    """What quantize_dynamic did, layer by layer; str() gives a table."""

    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model_bytes_before: int = 0   # all parameters and buffers, shared tensors counted once
    model_bytes_after: int = 0

    @property
    def converted(self) -> list[LayerReport]:
        return [r for r in self.layers if r.converted]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if not r.converted]

    def to_dict(self) -> dict:
        return {"layers": [asdict(r) for r in self.layers], "notes": list(self.notes),
                "model_bytes_before": self.model_bytes_before,
                "model_bytes_after": self.model_bytes_after,
                "converted": len(self.converted), "skipped": len(self.skipped)}

    def __str__(self) -> str:
        rows = [("layer", "type", "status", "bytes before", "bytes after", "detail")]
        for r in self.layers:
            rows.append((", ".join([r.name or "(root)"] + r.aliases), r.module_type,
                         "converted" if r.converted else "skipped",
                         f"{r.bytes_before:,}", f"{r.bytes_after:,}", r.detail))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5]
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"{len(self.converted)} converted, {len(self.skipped)} skipped; model "
                     f"weights {self.model_bytes_before:,} -> {self.model_bytes_after:,} bytes "
                     "(in memory: packed weights, scales, bias)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    unique = {id(t): t for t in tensors if t is not None}
    return sum(t.numel() * t.element_size() for t in unique.values())


def _module_bytes(m: nn.Module) -> int:
    return _tensor_bytes(list(m.parameters()) + list(m.buffers()))


def _check_options(opts, where: str) -> dict:
    if opts is None:
        return {}
    if not isinstance(opts, Mapping) or not all(isinstance(k, str) for k in opts):
        raise TypeError(f"{where} must be a dict of keyword options or None, got {opts!r}")
    return dict(opts)


def _parse_spec(spec, names: set[str]) -> tuple[dict, dict]:
    """qconfig_spec -> ({float type: options}, {module name: options})."""
    if spec is None:
        spec = set(DEFAULT_TYPES)
    if isinstance(spec, (str, type)) or not isinstance(spec, Iterable):
        raise TypeError("qconfig_spec must be a set/list of module types or names, or a dict "
                        f"mapping them to option dicts; got {spec!r}")
    items = spec.items() if isinstance(spec, Mapping) else ((k, None) for k in spec)
    by_type, by_name = {}, {}
    for key, opts in items:
        if isinstance(key, type):
            if key not in DYNAMIC_MODULES:
                known = ", ".join(t.__name__ for t in DYNAMIC_MODULES)
                raise ValueError(f"qconfig_spec: int8kit has no dynamic quantized module for "
                                 f"{key.__name__} (registered: {known})")
            by_type[key] = _check_options(opts, f"qconfig_spec[{key.__name__}]")
        elif isinstance(key, str):
            if key not in names:
                raise ValueError(f"qconfig_spec: the model has no module named {key!r}")
            by_name[key] = _check_options(opts, f"qconfig_spec[{key!r}]")
        else:
            raise TypeError(f"qconfig_spec entries must be module types or names, got {key!r}")
    return by_type, by_name


def _ancestors(name: str) -> list[str]:
    """The names of the modules above `name`, the root ("") included."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts))]


def _within(name: str, prefixes) -> str | None:
    """The longest prefix in `prefixes` that is `name` or one of its ancestors."""
    hits = [p for p in prefixes if p == "" or name == p or name.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def _skip_reason_for_subclass(mod: nn.Module, base: type, parent_selected: bool) -> str:
    if isinstance(mod, nn.modules.linear.NonDynamicallyQuantizableLinear):
        if parent_selected:  # its MultiheadAttention has a row of its own that says why
            return "out_proj of an nn.MultiheadAttention that was not converted: kept in float"
        return ("out_proj of nn.MultiheadAttention, which passes .weight straight to "
                "F.multi_head_attention_forward (as it does in_proj_weight): kept in float; "
                "add nn.MultiheadAttention to qconfig_spec to convert all its projections")
    return (f"subclass of {base.__name__} whose forward may differ; register "
            f"{type(mod).__name__} with register_dynamic_module to convert it")


def _disable_fast_path(module, args):
    """No-op forward pre-hook: a hooked TransformerEncoderLayer skips its fused path."""
    return None


def _fix_parents(model: nn.Module, converted: list[str]) -> list[str]:
    """Routes torch's fused transformer paths, which read child .weight tensors directly,
    to their ordinary forward so that the quantized children are actually called."""
    ancestors = {".".join(n.split(".")[:i]) for n in converted for i in range(n.count(".") + 1)}
    notes = []
    for name, m in model.named_modules():
        if name not in ancestors or name in converted:
            continue
        if type(m) is nn.TransformerEncoderLayer:
            if _disable_fast_path not in m._forward_pre_hooks.values():
                m.register_forward_pre_hook(_disable_fast_path)
            notes.append(f"{name or '(root)'}: TransformerEncoderLayer fused fast path "
                         "disabled (it reads linear weights as float) so the int8 layers run")
        elif type(m) is nn.TransformerEncoder:
            m.use_nested_tensor = False  # its nested-tensor path reads linear1.weight too
    return notes


def _no_activation(x):
    """A Transformer layer's activation once its ReLU runs in linear1's epilogue."""
    return x


def _fuse_ffn_relu(model: nn.Module, converted: list[str], report) -> list[str]:
    """Moves the ReLU of each Transformer layer's feed-forward block (linear1 -> ReLU ->
    dropout -> linear2) into its converted linear1's epilogue: the same values, without a
    pass over the widest activation of the layer (encoder 6x384, FFN 1536: 9% of its time
    in torch's clamp_min)."""
    done = set(converted)
    fused = {}  # linear1's name -> its scheme before and after
    for name, m in model.named_modules():
        if not isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            continue
        lin1, act = getattr(m, "linear1", None), m.activation
        lin1_name = f"{name}.linear1".lstrip(".")
        if (type(lin1) is not QuantLinear or lin1.relu or lin1_name not in done
                or not (act is F.relu or act is torch.relu or type(act) is nn.ReLU)):
            continue
        before = lin1.scheme()
        lin1.relu = True
        m.activation = nn.Identity() if isinstance(act, nn.Module) else _no_activation
        fused[lin1_name] = (before, lin1.scheme())
    for row in report.layers:
        if row.name in fused:
            row.detail = row.detail.replace(*fused[row.name], 1)
    if not fused:
        return []
    return [f"ReLU fused into linear1's epilogue in {len(fused)} Transformer layers "
            f"({', '.join(fused)}); their activation is now the identity"]


def _depthwise_note(model: nn.Module, converted: list[str]) -> list[str]:
    """A note naming the converted depthwise convs: float in and out, they measure x's
    range and then quantize it, two passes over the float input where float32 makes one,
    and so little arithmetic pays for that that they can run slower than float32."""
    mods = dict(model.named_modules())
    dw = [n for n in converted if isinstance(mods.get(n), QuantConv2d)
          and 1 < mods[n].groups == mods[n].in_channels == mods[n].out_channels]
    if not dw:
        return []
    return [f"depthwise convs converted ({', '.join(n or '(root)' for n in dw)}): dynamic int8 "
            "reads their float input twice (range, then quantize), and they can run slower "
            "than float32; keep them float with skip=[...], or quantize statically "
            "(int8kit.quantize_static), where they compute on uint8 directly"]


def _swap(model: nn.Module, new_for: dict[int, nn.Module]) -> nn.Module:
    """Replaces every reference to a converted module (shared ones included)."""
    for parent in list(model.modules()):
        for key, child in parent._modules.items():
            if child is not None and id(child) in new_for:
                parent._modules[key] = new_for[id(child)]
    return new_for.get(id(model), model)


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as e:
        # TypeError, as deepcopy's own: the model holds an object of a type that cannot be
        # copied (a lock, a file, a C handle), so existing `except TypeError` still applies
        raise TypeError(f"model could not be deep-copied for inplace=False ({type(e).__name__}: "
                        f"{e}); pass inplace=True to convert it in place (it is changed only "
                        "if the whole conversion succeeds)") from e


def _tied_notes(converted: list, owners: dict, new_names: set) -> list[str]:
    """Says, on each converted row whose weight is tied to other modules, whether those keep
    a float copy; converted ones each hold an int8 copy of their own (a note says so)."""
    groups = {}
    for row, mod, names in converted:
        w = getattr(mod, "weight", None)
        others = [o for o in owners.get(id(w), []) if o not in names] if w is not None else []
        # an owner inside a converted unit (an attention's out_proj) is gone as well
        gone = [o for o in others if any(a in new_names for a in [o] + _ancestors(o))]
        kept = [o for o in others if o not in gone]
        if kept:
            row.detail += f"; weight tied to {kept}, whose float copy stays"
        if gone:
            row.detail += f"; weight tied to {gone}, converted too (an int8 copy each)"
            groups.setdefault(id(w), []).append(row.name)
    return [f"tied weight converted separately in {g}: each layer now holds its own int8 "
            "copy (no longer shared, the model can grow); skip them to keep the float weight"
            for g in groups.values()]


def quantize_dynamic(model: nn.Module, qconfig_spec=None, *, inplace: bool = False,
                     skip: Iterable[str] = (), strict: bool = False,
                     **options) -> nn.Module:
    """Returns `model` with its nn.Linear and nn.MultiheadAttention layers (or the selected
    ones) in int8.

    qconfig_spec: None (every nn.Linear and nn.MultiheadAttention), a set of module types
      and/or module names (a name selects that module and everything under it), or a dict
      mapping them to option dicts, e.g. {nn.Linear: {"weight": "per_tensor"}}.
      An nn.MultiheadAttention becomes a QuantMultiheadAttention with its q, k, v and out
      projections in int8 (one report row); selecting nn.Linear alone leaves attention in
      float (its out_proj cannot be swapped on its own and is reported as skipped).
    skip: module names (and everything under them) to keep in float. A module shared under
      several names is one module: skipped if any of its names is, converted under all of
      them. Skipping a part of a module converted as a unit (an attention's out_proj) keeps
      the whole unit in float; selecting such a part by name raises ValueError.
    options: passed to every from_float, e.g. weight="per_tensor", activation="per_tensor".
    strict: raise NotConvertibleError instead of skipping a layer that cannot be converted.
    The result carries `int8kit_report`, a ConversionReport. With inplace=False the input
    model is never modified; with inplace=True it is modified only if the whole conversion
    succeeds (a converted root module is returned, not swapped in place). Forward hooks
    carry over: inplace=True hands the same hook dicts to the new modules, so the user's
    handles still remove them; inplace=False converts a deep copy, whose hooks still fire
    but are beyond the reach of handles taken on the original model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(skip, str):
        skip = (skip,)
    skip = list(skip)
    names = {n for n, _ in model.named_modules(remove_duplicate=False)}
    by_type, by_name = _parse_spec(qconfig_spec, names)
    unknown = [s for s in skip if not isinstance(s, str) or s not in names]
    if unknown:
        raise ValueError(f"skip: the model has no module named {unknown}")

    target = model if inplace else _copy(model)
    report = ConversionReport(model_bytes_before=_module_bytes(target))
    owners: dict[int, list[str]] = {}
    for pname, p in target.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname.rpartition(".")[0])
    # A module shared under several names is decided once, from all its names: skipped if
    # any is skipped, selected if any is selected; _swap replaces it under every name.
    aliases: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, mod in target.named_modules(remove_duplicate=False):
        aliases.setdefault(id(mod), []).append(name)
        modules[id(mod)] = mod

    new_for: dict[int, nn.Module] = {}
    done: list[str] = []
    new_names: set[str] = set()  # (a set: models can have thousands of layers)
    listed: set[str] = set()  # names with a report row
    converted = []  # (row, float module, its names)
    for key, names in aliases.items():
        mod, name = modules[key], names[0]
        if any(a in new_names for n in names for a in _ancestors(n)):
            continue  # inside a module already replaced
        base = next((t for t in DYNAMIC_MODULES if isinstance(mod, t)), None)
        keys = {k for k in (_within(n, by_name) for n in names) if k is not None}
        if base is None or not (keys or any(isinstance(mod, t) for t in by_type)):
            continue
        name_opts = [by_name[k] for k in sorted(keys)]
        if any(o != name_opts[0] for o in name_opts):
            raise ValueError(f"qconfig_spec: {sorted(keys)} give different options to one "
                             f"module shared as {names}")
        row = LayerReport(name, type(mod).__name__, False, "", _module_bytes(mod), 0,
                          names[1:])
        report.layers.append(row)
        listed.update(names)
        quant_cls = DYNAMIC_MODULES.get(type(mod))
        skipped = next((s for s in (_within(n, skip) for n in names) if s is not None), None)
        # names strictly inside a module that is converted as a unit (an attention's out_proj)
        inner = [s for s in skip + list(by_name)
                 if any(a in names for a in _ancestors(s))] if quant_cls else []
        if skipped is not None:
            row.detail = f"in skip list ({skipped!r})"
        elif quant_cls is None:
            row.detail = _skip_reason_for_subclass(
                mod, base, any(n.rpartition(".")[0] in listed for n in names))
        elif inner and inner[0] in skip:
            # skipping a part is only possible by keeping the whole unit in float
            row.detail = (f"kept in float: {inner[0]!r} is in the skip list, and a "
                          f"{type(mod).__name__} is converted as a unit")
        elif inner:
            raise ValueError(f"qconfig_spec: {inner[0]!r} lies inside {name!r}, a "
                             f"{type(mod).__name__} that is converted as a unit; select "
                             f"{name!r} (and its options) instead")
        else:
            opts = {**options, **by_type.get(type(mod), {}), **(name_opts[0] if keys else {})}
            try:
                new = quant_cls.from_float(mod, **opts)
            except NotConvertibleError as e:
                row.detail = str(e)
            else:
                for attr in _HOOK_DICTS:  # the same dicts: the user's hook handles still work
                    if hasattr(mod, attr):
                        setattr(new, attr, getattr(mod, attr))
                new.train(mod.training)
                new_for[id(mod)] = new
                done += names
                new_names.update(names)
                row.converted = True
                row.detail = new.scheme()
                converted.append((row, mod, names))
        if not row.converted:
            row.bytes_after = row.bytes_before
            if strict and not row.detail.startswith(("in skip list", "kept in float:")):
                raise NotConvertibleError(f"cannot convert {name or '(root)'}: {row.detail}")
        else:
            row.bytes_after = new_for[id(mod)].weight_bytes()
    tied = _tied_notes(converted, owners, new_names)

    # Commit: nothing below can fail on a well-formed module tree.
    result = _swap(target, new_for)
    report.notes = (_fix_parents(result, done) + _fuse_ffn_relu(result, done, report)
                    + _depthwise_note(result, done) + tied)
    report.model_bytes_after = _module_bytes(result)
    result.int8kit_report = report
    return result
