"""Fusion before quantization: fold BatchNorm into the preceding conv/linear, mark ReLUs.

  conv + bn         -> nn.Conv2d with the BN folded into weight and bias
  conv + bn + relu  -> ConvReLU2d(folded conv)
  conv + relu       -> ConvReLU2d(conv)
  linear + relu     -> LinearReLU(linear)
  linear + bn1d     -> nn.Linear with the BN folded in (bn over the features of [N, F])
  linear + bn1d + relu -> LinearReLU(folded linear)

The first module of a group is replaced by the fused one and the others by nn.Identity,
so module names, and any code that calls them, keep working. Folding uses the running
statistics, so BatchNorm must be in eval mode (as it is for inference); the fused
model's float outputs then equal the original's within float rounding.

fuse_modules(model) finds the patterns among the consecutive children of every
nn.Sequential (the only container whose order is its data flow); groups elsewhere are
named explicitly: fuse_modules(model, [["conv1", "bn1", "relu1"]]).
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


FUSED_TYPES = (ConvReLU2d, LinearReLU)


def _check_bn(bn, channels: int, where: str):
    if bn.training:
        raise ValueError(f"{where}: BatchNorm is in training mode; call model.eval() before "
                         "fusing (folding uses the running statistics)")
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(f"{where}: BatchNorm has no running statistics to fold")
    if bn.num_features != channels:
        raise ValueError(f"{where}: BatchNorm has {bn.num_features} features, the layer "
                         f"before it produces {channels}")


@torch.no_grad()
def _fold_bn(layer, bn, where: str):
    """A copy of conv/linear `layer` with y = bn(layer(x)) folded into its weight and bias.
    Computed in float64 and cast back, so the fold adds no rounding beyond the final cast."""
    out_ch = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    _check_bn(bn, out_ch, where)
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


def _fuse_group(model: nn.Module, names: list[str]) -> None:
    mods = [model.get_submodule(n) for n in names]
    where = " + ".join(names)
    hit = _match(mods)
    if hit is None or len(hit[0]) != len(mods):
        kinds = ", ".join(type(m).__name__ for m in mods)
        raise ValueError(f"cannot fuse [{where}] ({kinds}); supported: conv+bn, conv+bn+relu, "
                         "conv+relu, linear+relu, linear+bn1d, linear+bn1d+relu")
    fused = hit[1](mods, where)
    for i, name in enumerate(names):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, fused if i == 0 else nn.Identity())


def find_fusable(model: nn.Module) -> list[list[str]]:
    """Groups of consecutive nn.Sequential children that match a fusion pattern."""
    groups = []
    for pname, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        keys = list(parent._modules)
        i = 0
        while i < len(keys):
            hit = _match([parent._modules[k] for k in keys[i:]])
            if hit is None:
                i += 1
                continue
            n = len(hit[0])
            groups.append([f"{pname}.{k}" if pname else k for k in keys[i:i + n]])
            i += n
    return groups


def fuse_modules(model: nn.Module, groups: list[list[str]] | None = None,
                 inplace: bool = False) -> nn.Module:
    """Fuses `groups` of module names (default: every pattern found in nn.Sequentials).

    With inplace=False the model is copied first and never modified; with inplace=True it
    is modified only if every group fuses (all groups are checked before any swap).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if groups is None:
        groups = find_fusable(model)
    names = {n for n, _ in model.named_modules()}
    for g in groups:
        if isinstance(g, str) or not all(isinstance(n, str) for n in g) or len(g) < 2:
            raise TypeError(f"each group must be a list of at least two module names, got {g!r}")
        missing = [n for n in g if n not in names]
        if missing:
            raise ValueError(f"fuse_modules: the model has no module named {missing}")
    work = copy.deepcopy(model)
    for g in groups:
        _fuse_group(work, list(g))
    if not inplace:
        return work
    for key in list(model._modules):  # commit: adopt the fused children
        model._modules[key] = work._modules[key]
    return model
