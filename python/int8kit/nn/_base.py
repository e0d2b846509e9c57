"""Plumbing shared by int8kit's quantized modules.

A quantized module keeps three kinds of state:
  * persistent buffers (float32 scales, float32 bias, ...): saved by state_dict();
  * the weight, run from one non-persistent uint8 buffer `packed` in the kernel layout,
    the only copy in memory;
  * plain attributes for the scheme (not tensors, not saved in state_dict).

state_dict(), pickles and deepcopies carry the weight as a plain int8 `qweight`
(CPU-independent, unpacked on save with `_unpack()`), and loading packs it again for the
CPU it runs on. Classes expose `qweight` as a read-only property for inspection (see
QuantLinear). A module without a weight of its own (a container of quantized modules,
such as QuantMultiheadAttention) sets `_owns_weight = False` and saves, loads and pickles
as an nn.Module.
"""

from __future__ import annotations

import torch
from torch import nn


# What the quantized modules take as activations (their output has the same dtype).
# Float inputs the modules take; all but float32 are converted to it and the output back.
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_float_input(x, name: str = "x") -> None:
    """A float CPU tensor, or a TypeError/ValueError naming `name`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in INPUT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if not x.is_cpu:  # (x.device builds an object: 0.4 us)
        raise ValueError(f"{name} must be a CPU tensor (int8kit's kernels run on CPU), "
                         f"got device {x.device}")
    if x.layout is not torch.strided:
        raise ValueError(f"{name} must be a dense tensor, got layout {x.layout} "
                         "(call .to_dense() first)")
    if x.is_nested:
        raise ValueError(f"{name} must be a dense tensor, got a nested tensor")


_is_compiling = torch.compiler.is_compiling  # (module attribute lookups cost when cold)
_jit_tracing_state = torch._C._get_tracing_state


def use_custom_op(x) -> bool:
    """True while tracing (torch.compile, torch.export, jit, fake or proxy tensors): the
    kernels then run as torch.library custom ops, which the tracers understand."""
    return type(x) is not torch.Tensor or _is_compiling() or _jit_tracing_state() is not None


# The smallest normal float32: a smaller input scale has no float32 reciprocal (inf).
_MIN_INPUT_SCALE = 2.0 ** -126


def checked_input_params(scale: float, zero_point: int) -> tuple[float, int]:
    """(scale, zero_point) of a static module's input if they can quantize it, else a
    ValueError. A state dict or an in-place edit can hold values that set_input_qparams
    refuses, and the conv kernel reads a scale of 0 as "measure the range" (dynamic)."""
    if not (_MIN_INPUT_SCALE <= scale < float("inf")):
        raise ValueError(f"input_scale must be finite and >= {_MIN_INPUT_SCALE:.3g} (a normal "
                         f"float32), got {scale}")
    if not 0 <= zero_point <= 255:
        raise ValueError(f"input_zero_point must be in [0, 255], got {zero_point}")
    return scale, zero_point


class NotConvertibleError(ValueError):
    """A float module that a quantized module cannot represent (reported, then skipped)."""


def checked_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """A float module's bias as float32 (None stays None). NaN or Inf cannot be converted:
    every forward would refuse it."""
    if bias is None:
        return None
    b = bias.detach().float()
    if not bool(torch.isfinite(b).all()):
        raise NotConvertibleError("bias contains NaN or Inf")
    return b


class QuantModuleBase(nn.Module):
    """Subclasses with a weight define _pack(w) -> uint8 tensor from the int8 weight w,
    _unpack() -> w, and _qweight_shape() -> the weight's shape (to check what
    load_state_dict gets), and list their float32 buffers."""

    _owns_weight: bool = True  # False: no weight of its own (see the module docstring)

    # Scales and bias feed the fused epilogue in float32: model.to(bfloat16) or .half()
    # must not round them (the activations' dtype is handled in forward).
    _float32_buffers: tuple[str, ...] = ()

    # Buffers the kernels read, in the order _kernel_views returns them: the packed
    # weight, its scales and the bias first, then any others.
    _kernel_buffers: tuple[str, ...] = ("packed", "weight_scale", "bias")

    def _kernel_views(self):
        """numpy views of the _kernel_buffers, made once: tensor.numpy() costs about a
        microsecond each per call. Rebuilt when a buffer is replaced (to(),
        load_state_dict, repacking) or gets new memory in place (`buf.data = t`, set_,
        share_memory(): the old views would read freed memory); in-place updates of the
        values show through the views."""
        cache = self.__dict__.get("_views_cache")
        if cache is not None:
            # The first three unrolled: a loop over them costs twice as much (0.7 us more
            # with the interpreter out of cache, as it is between a model's layers).
            b, key, ptr = self._buffers, cache[0], cache[1]
            p, s, bias = b.get("packed"), b.get("weight_scale"), b.get("bias")
            if (p is key[0] and s is key[1] and bias is key[2]
                    and p.data_ptr() == ptr[0] and s.data_ptr() == ptr[1]
                    and (bias is None or bias.data_ptr() == ptr[2])
                    and (len(key) == 3 or all(
                        b.get(name) is t and (t is None or t.data_ptr() == q)
                        for name, t, q in zip(self._kernel_buffers[3:], key[3:], ptr[3:])))):
                return cache[2]
        names = self._kernel_buffers
        assert names[:3] == ("packed", "weight_scale", "bias"), names
        key = tuple(self._buffers[n] for n in names)
        cache = (key, tuple(None if t is None else t.data_ptr() for t in key),
                 tuple(None if t is None else t.numpy() for t in key))
        self.__dict__["_views_cache"] = cache
        return cache[2]

    def _pack(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _unpack(self) -> torch.Tensor:
        raise NotImplementedError

    def _qweight_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _packed_device(self) -> torch.device:
        return self.packed.device if "packed" in self._buffers else torch.device("cpu")

    def _set_qweight(self, w: torch.Tensor) -> None:
        """The int8 weight w becomes the packed buffer (w itself is not kept)."""
        self.register_buffer("packed", self._pack(w).to(self._packed_device()), persistent=False)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self._owns_weight:  # first, where the buffer used to be registered: same key order
            destination[prefix + "qweight"] = self._unpack()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # All or nothing for this module: torch copies each matching buffer in place and
        # reports the others, so after an error (a wrong shape or dtype) the copied ones
        # are put back and the weight is not repacked. (Missing and unexpected keys are
        # judged by load_state_dict afterwards, for the whole model, as for torch's modules:
        # it always passes strict=True here.)
        n_errors = len(error_msgs)
        saved = {k: t.clone() for k, t in self._buffers.items()
                 if t is not None and k != "packed"}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        w = None
        if self._owns_weight:
            key = prefix + "qweight"
            if key in unexpected_keys:  # not a buffer here, but ours to read
                unexpected_keys.remove(key)
            w = state_dict.get(key)
            if w is None:
                missing_keys.append(key)
            elif not isinstance(w, torch.Tensor) or w.dtype != torch.int8:
                error_msgs.append(f"qweight for {key}: expected an int8 tensor, got "
                                  f"{getattr(w, 'dtype', type(w).__name__)}")
            elif tuple(w.shape) != tuple(self._qweight_shape()):
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{tuple(w.shape)} from checkpoint, the shape in current "
                                  f"model is {tuple(self._qweight_shape())}.")
        if len(error_msgs) > n_errors:
            for k, t in saved.items():
                if self._buffers.get(k) is not None:
                    with torch.no_grad():
                        self._buffers[k].copy_(t)
            return
        if isinstance(w, torch.Tensor):
            self._set_qweight(w)

    def __getstate__(self):
        # Pickles (torch.save(model), deepcopy) carry the int8 weight as a `qweight` buffer,
        # not the CPU-specific packing (files from before the packing-only modules load).
        state = self.__dict__.copy()
        for cache in ("_views_cache", "_input_params_cache"):  # keyed on this process's
            state.pop(cache, None)                             # buffers: rebuilt on use
        buffers = {k: v for k, v in self._buffers.items() if k != "packed"}
        if self._owns_weight:
            buffers = {"qweight": self._unpack(), **buffers}
        state["_buffers"] = buffers
        return state

    def __setstate__(self, state):
        if not self._owns_weight:
            return super().__setstate__(state)
        state = dict(state, _buffers=dict(state["_buffers"]))
        w = state["_buffers"].pop("qweight")
        super().__setstate__(state)
        self._set_qweight(w)

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
        """Bytes of weight state in memory: every buffer (the packed weight included).

        include_packed=False: the bytes of the saved form instead, with the weight as plain
        int8 (what state_dict() holds)."""
        total = sum(b.numel() * b.element_size() for name, b in self._buffers.items()
                    if b is not None and (include_packed or name != "packed"))
        if self._owns_weight and not include_packed:
            n = 1
            for d in self._qweight_shape():
                n *= d
            total += n
        return total
