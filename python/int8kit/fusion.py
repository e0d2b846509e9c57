"""Fusion before quantization: fold BatchNorm into the preceding conv/linear, mark ReLUs.

  conv + bn         -> nn.Conv2d with the BN folded into weight and bias
  conv + bn + relu  -> ConvReLU2d(folded conv)
  conv + relu       -> ConvReLU2d(conv)
  linear + relu     -> LinearReLU(linear)
  linear + bn1d     -> LinearBN1d: nn.Linear with the BN folded in (for [N, F] input only)
  linear + bn1d + relu -> LinearReLU(LinearBN1d)

The first module of a group is replaced by the fused one and the others by nn.Identity,
so module names, and any code that calls them, keep working. Folding uses the running
statistics, so BatchNorm must be in eval mode (as it is for inference); the fused
model's float outputs then equal the original's within float rounding.

fuse_modules(model) finds the patterns among the consecutive children of every
nn.Sequential (the only container whose order is its data flow), leaving out pairs whose
BatchNorm cannot be folded (no running statistics, or another feature count); groups
elsewhere are named explicitly: fuse_modules(model, [["conv1", "bn1", "relu1"]]).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ConvReLU2d(nn.Module):
    """relu(conv(x)): a conv whose quantized form fuses the ReLU into its epilogue."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return torch.relu(self.conv(x))


class LinearReLU(nn.Module):
    """relu(linear(x)), fused in the quantized form the same way."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return torch.relu(self.linear(x))


class LinearBN1d(nn.Linear):
    """nn.Linear with a BatchNorm1d folded into its weight and bias. The fold holds for
    [N, features] input only: on [N, C, L] BatchNorm1d normalizes dim 1, not the features,
    so any other input raises instead of giving wrong values."""

    fused_from = "linear + bn1d"  # the fused group's names, for the error

    def forward(self, input):
        if input.dim() != 2:
            raise ValueError(
                f"{self.fused_from}: BatchNorm1d is folded into this Linear, which is right "
                f"only for 2-D input [N, features]; got shape {tuple(input.shape)}, on which "
                "BatchNorm1d normalizes dim 1. Leave the pair unfused: prepare(..., "
                "fuse=False), or fuse_groups / fuse_modules groups without it")
        return super().forward(input)


FUSED_TYPES = (ConvReLU2d, LinearReLU, LinearBN1d)


def _out_channels(layer) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _bn_problem(bn, channels: int) -> str | None:
    """Why `bn` cannot be folded into a layer with `channels` outputs, or None."""
    if not bn.track_running_stats or bn.running_mean is None:
        return "BatchNorm has no running statistics to fold"
    if bn.num_features != channels:
        return f"BatchNorm has {bn.num_features} features, the layer before it produces {channels}"
    return None


def _check_bn(bn, channels: int, where: str):
    if bn.training:
        raise ValueError(f"{where}: BatchNorm is in training mode; call model.eval() before "
                         "fusing (folding uses the running statistics)")
    problem = _bn_problem(bn, channels)
    if problem:
        raise ValueError(f"{where}: {problem}; leave this group unfused (prepare(..., "
                         "fuse=False) fuses nothing)")


@torch.no_grad()
def _fold_bn(layer, bn, where: str):
    """A copy of conv/linear `layer` with y = bn(layer(x)) folded into its weight and bias.
    Computed in float64 and cast back, so the fold adds no rounding beyond the final cast."""
    _check_bn(bn, _out_channels(layer), where)
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + bn.eps)
    fused = copy.deepcopy(layer)
    w = layer.weight.double()
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)
    dtype = layer.weight.dtype
    fused.weight = nn.Parameter((w * factor.reshape(-1, *[1] * (w.dim() - 1))).to(dtype))
    fused.bias = nn.Parameter(((b - mean) * factor + beta).to(dtype))
    if type(fused) is nn.Linear:  # a copy, so its hooks and attributes stay
        fused.__class__, fused.fused_from = LinearBN1d, where
    return fused


# Patterns: (types of the group) -> builder(modules, where) -> fused module.
_PATTERNS = [
    ((nn.Conv2d, nn.BatchNorm2d, nn.ReLU), lambda m, w: ConvReLU2d(_fold_bn(m[0], m[1], w))),
    ((nn.Conv2d, nn.BatchNorm2d), lambda m, w: _fold_bn(m[0], m[1], w)),
    ((nn.Conv2d, nn.ReLU), lambda m, w: ConvReLU2d(copy.deepcopy(m[0]))),
    ((nn.Linear, nn.BatchNorm1d, nn.ReLU), lambda m, w: LinearReLU(_fold_bn(m[0], m[1], w))),
    ((nn.Linear, nn.BatchNorm1d), lambda m, w: _fold_bn(m[0], m[1], w)),
    ((nn.Linear, nn.ReLU), lambda m, w: LinearReLU(copy.deepcopy(m[0]))),
]


def _match(mods) -> tuple | None:
    for types, build in _PATTERNS:
        if len(mods) >= len(types) and all(type(m) is t for m, t in zip(mods, types)):
            return types, build
    return None


def _fused_group(model: nn.Module, names: list[str]) -> list[tuple]:
    """(name, parent, attribute, new module) for each slot of the group; swaps nothing."""
    mods = [model.get_submodule(n) for n in names]
    where = " + ".join(names)
    hit = _match(mods)
    if hit is None or len(hit[0]) != len(mods):
        kinds = ", ".join(type(m).__name__ for m in mods)
        raise ValueError(f"cannot fuse [{where}] ({kinds}); supported: conv+bn, conv+bn+relu, "
                         "conv+relu, linear+relu, linear+bn1d, linear+bn1d+relu")
    fused = hit[1](mods, where)
    slots = []
    for i, name in enumerate(names):
        parent_name, _, attr = name.rpartition(".")
        slots.append((name, model.get_submodule(parent_name), attr,
                      fused if i == 0 else nn.Identity()))
    return slots


def find_fusable(model: nn.Module) -> list[list[str]]:
    """Groups of consecutive nn.Sequential children that match a fusion pattern (groups
    with a BatchNorm that cannot be folded are left out)."""
    groups = []
    for pname, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        keys = list(parent._modules)
        i = 0
        while i < len(keys):
            mods = [parent._modules[k] for k in keys[i:]]
            hit = _match(mods)
            if hit is None or (hit[0][1] in (nn.BatchNorm1d, nn.BatchNorm2d)
                               and _bn_problem(mods[1], _out_channels(mods[0]))):
                i += 1
                continue
            n = len(hit[0])
            groups.append([f"{pname}.{k}" if pname else k for k in keys[i:i + n]])
            i += n
    return groups


def fuse_modules(model: nn.Module, groups: list[list[str]] | None = None,
                 inplace: bool = False) -> nn.Module:
    """Fuses `groups` of module names (default: every pattern found in nn.Sequentials).

    With inplace=False the model is copied first and never modified. With inplace=True only
    the grouped slots change (the first to the fused module, the others to nn.Identity),
    and only if every group fuses: all are built before any swap. Other modules stay the
    same objects, so an optimizer or any reference to them keeps working.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if groups is None:
        groups = find_fusable(model)
    # remove_duplicate=False: a module used in two places answers to both names.
    names = {n for n, _ in model.named_modules(remove_duplicate=False)}
    for g in groups:
        if isinstance(g, str) or not all(isinstance(n, str) for n in g) or len(g) < 2:
            raise TypeError(f"each group must be a list of at least two module names, got {g!r}")
        missing = [n for n in g if n not in names]
        if missing:
            raise ValueError(f"fuse_modules: the model has no module named {missing}")
    if not inplace:
        model = copy.deepcopy(model)
    swaps = [slot for g in groups for slot in _fused_group(model, list(g))]
    seen = {}
    for name, parent, attr, _ in swaps:
        if (id(parent), attr) in seen:
            raise ValueError(f"fuse_modules: {name!r} (as {seen[id(parent), attr]!r}) is in "
                             "more than one group")
        seen[id(parent), attr] = name
    for _, parent, attr, new in swaps:
        setattr(parent, attr, new)
    return model
