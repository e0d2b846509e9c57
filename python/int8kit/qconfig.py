"""Which observers static quantization uses, globally and per layer.

A QConfig pairs two observer factories (callables returning a fresh observer): one for a
layer's input activations, one for its weight. The kernels fix what each may be:
activations are uint8 per tensor (the GEMM takes one zero point per row of A, and a
static layer has one for all rows); weights are signed symmetric (zero point 0), per
output channel (axis 0) or per tensor.

QuantConfig maps layers to QConfigs: a module name (which also covers everything under
it; the longest matching name wins) overrides a module type, which overrides the global
default. Mapping to None keeps that layer in float.

    cfg = QuantConfig()                                        # good defaults
    cfg = QuantConfig(activation=HistogramObserver.with_args(percentile=99.9))
    cfg.set_module_type(nn.Conv2d, QConfig(weight=MinMaxObserver.with_args(
        symmetric=True, signed=True)))                         # per-tensor conv weights
    cfg.set_module_name("classifier", None)                    # keep the head in float
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .observers import MinMaxObserver, MSEObserver, ObserverBase

# Activations: the MSE-optimal range over a histogram clips rare outliers only when that
# lowers the overall error, so it needs no tuning (torch.ao's x86 default, the
# HistogramObserver, minimizes the same L2 error). Weights: per-channel min/max, exact
# for the largest weight of every output channel (torch.ao's default too).
default_activation_observer = MSEObserver.with_args()
default_weight_observer = MinMaxObserver.with_args(symmetric=True, signed=True, axis=0)


def _check_observer(factory, what: str) -> ObserverBase:
    if not callable(factory):
        raise TypeError(f"{what} must be an observer factory (e.g. "
                        f"MinMaxObserver.with_args(...)), got {factory!r}")
    obs = factory()
    if not isinstance(obs, ObserverBase):
        raise TypeError(f"{what} must build an int8kit observer, got {type(obs).__name__}")
    return obs


@dataclass(frozen=True)
class QConfig:
    """Observer factories for a layer's input activation and its weight."""

    activation: Callable[[], ObserverBase] = default_activation_observer
    weight: Callable[[], ObserverBase] = default_weight_observer

    def __post_init__(self):
        act = _check_observer(self.activation, "QConfig.activation")
        if act.bits != 8 or act.signed or act.axis is not None:
            raise ValueError("QConfig.activation must observe 8-bit unsigned per-tensor "
                             f"ranges (the kernels take uint8 activations), got {act.extra_repr()}")
        w = _check_observer(self.weight, "QConfig.weight")
        if w.bits != 8 or not (w.signed and w.symmetric) or w.axis not in (None, 0):
            raise ValueError("QConfig.weight must observe 8-bit signed symmetric ranges, per "
                             "tensor (axis=None) or per output channel (axis=0), "
                             f"got {w.extra_repr()}")


def default_qconfig() -> QConfig:
    return QConfig()


class QuantConfig:
    """Global QConfig plus per-type and per-name overrides (None = keep in float)."""

    def __init__(self, global_qconfig: QConfig | None = None, *, activation=None, weight=None):
        if global_qconfig is not None and not isinstance(global_qconfig, QConfig):
            raise TypeError("global_qconfig must be a QConfig, "
                            f"got {type(global_qconfig).__name__}")
        base = global_qconfig or QConfig()
        if activation is not None or weight is not None:
            base = QConfig(activation or base.activation, weight or base.weight)
        self.global_qconfig = base
        self.by_type: dict[type, QConfig | None] = {}
        self.by_name: dict[str, QConfig | None] = {}

    @staticmethod
    def _check(qconfig, what):
        if qconfig is not None and not isinstance(qconfig, QConfig):
            raise TypeError(f"{what} must be a QConfig or None, got {type(qconfig).__name__}")

    def set_global(self, qconfig: QConfig) -> "QuantConfig":
        if not isinstance(qconfig, QConfig):
            raise TypeError(f"qconfig must be a QConfig, got {type(qconfig).__name__}")
        self.global_qconfig = qconfig
        return self

    def set_module_type(self, module_type: type, qconfig: QConfig | None) -> "QuantConfig":
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
        self._check(qconfig, "qconfig")
        self.by_type[module_type] = qconfig
        return self

    def set_module_name(self, name: str, qconfig: QConfig | None) -> "QuantConfig":
        if not isinstance(name, str):
            raise TypeError(f"name must be a module name (str), got {name!r}")
        self._check(qconfig, "qconfig")
        self.by_name[name] = qconfig
        return self

    def check_names(self, names) -> None:
        """Raises if a per-name entry matches no module (a typo would silently do nothing)."""
        unknown = sorted(n for n in self.by_name if n not in set(names))
        if unknown:
            raise ValueError(f"QuantConfig: the model has no module named {unknown}")

    def qconfig_for(self, name: str, module: nn.Module, float_types=()) -> QConfig | None:
        """The QConfig for the module called `name`; float_types are the float layer types
        it stands for (a fused conv+relu answers to the nn.Conv2d entry)."""
        hits = [p for p in self.by_name if p == "" or name == p or name.startswith(p + ".")]
        if hits:
            return self.by_name[max(hits, key=len)]
        for t in (type(module), *float_types):
            if t in self.by_type:
                return self.by_type[t]
        return self.global_qconfig

    def __repr__(self) -> str:
        return (f"QuantConfig(global={self.global_qconfig}, types="
                f"{ {t.__name__: q for t, q in self.by_type.items()} }, names={self.by_name})")
