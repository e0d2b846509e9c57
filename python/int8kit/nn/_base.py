"""Plumbing shared by int8kit's quantized modules (Linear now, Conv2d later).

A quantized module keeps three kinds of state:
  * persistent buffers (plain int8 weight, float32 scales, float32 bias): what
    state_dict() saves, CPU-independent;
  * one non-persistent uint8 buffer `packed`: the kernel layout, rebuilt from the int8
    weight whenever the weight changes (load_state_dict, unpickling), never saved;
  * plain attributes for the scheme (not tensors, not saved in state_dict).
"""

from __future__ import annotations

import torch
from torch import nn


class NotConvertibleError(ValueError):
    """A float module that a quantized module cannot represent (reported, then skipped)."""


class QuantModuleBase(nn.Module):
    """Subclasses define _pack() -> uint8 tensor and list their float32 buffers."""

    # Scales and bias feed the fused epilogue in float32: model.to(bfloat16) or .half()
    # must not round them (the activations' dtype is handled in forward).
    _float32_buffers: tuple[str, ...] = ()

    def _pack(self) -> torch.Tensor:
        raise NotImplementedError

    def _repack(self) -> None:
        device = self.packed.device if "packed" in self._buffers else torch.device("cpu")
        self.register_buffer("packed", self._pack().to(device), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._repack()  # packed layout is private to this process and CPU: rebuild it

    def __getstate__(self):
        # Pickles (torch.save(model)) carry the int8 weight, not the CPU-specific packing.
        state = self.__dict__.copy()
        state["_buffers"] = {k: v for k, v in self._buffers.items() if k != "packed"}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._repack()

    def _apply(self, fn, recurse=True):
        kept = {n: getattr(self, n) for n in self._float32_buffers
                if getattr(self, n, None) is not None}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = getattr(self, name)
            if new.dtype != torch.float32:  # a dtype cast: keep float32, follow the device
                self._buffers[name] = old.to(new.device)
        return self

    def weight_bytes(self, include_packed: bool = True) -> int:
        """Bytes of weight state in memory (int8 weight, scales, bias, and the packing)."""
        return sum(b.numel() * b.element_size() for name, b in self._buffers.items()
                   if b is not None and (include_packed or name != "packed"))
