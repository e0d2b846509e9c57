"""Turns the `data` argument of compare() into one input tensor and optional labels.

The whole evaluation set is gathered into memory: slices are masks over samples, changed
predictions are reported by index, and latency needs fixed batches cut from the same data.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except Exception as e:
        raise TypeError(f"{what} must be a tensor (or convertible to one), "
                        f"got {type(x).__name__}") from e


def _split_batch(batch, i: int):
    """A batch is a tensor of inputs or an (inputs, labels, ...) tuple/list."""
    if isinstance(batch, (tuple, list)):
        if len(batch) < 1:
            raise ValueError(f"data: batch {i} is an empty tuple")
        x = _as_tensor(batch[0], f"data: batch {i} inputs")
        y = _as_tensor(batch[1], f"data: batch {i} labels") if len(batch) > 1 else None
        return x, y
    return _as_tensor(batch, f"data: batch {i}"), None


def _column(v) -> bool:
    """A tensor, an array, or a list of numbers (nested lists too): one side of an
    (inputs, labels) pair. A list holding tensors or tuples is a list of batches."""
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return True
    return isinstance(v, list) and not any(isinstance(e, (torch.Tensor, np.ndarray, tuple))
                                           for e in v)


def _pair(data) -> tuple[torch.Tensor, torch.Tensor]:
    x = _as_tensor(data[0], "data[0] (inputs)")
    y = _as_tensor(data[1], "data[1] (labels)")
    nx, ny = (len(t) if t.dim() else 0 for t in (x, y))
    if nx != ny:
        raise ValueError(f"data: a 2-tuple of arrays is read as (inputs, labels), but inputs "
                         f"have {nx} samples and labels {ny}; pass labels of length {nx}, "
                         "or a list of batches")
    return x, y


def gather(data, labels=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (inputs [N, ...], labels [N] or None). Raises ValueError on empty data or a
    label count that does not match the number of inputs."""
    if data is None:
        raise ValueError("data must not be None")
    if isinstance(data, torch.Tensor):
        x, y = data, None
    elif isinstance(data, tuple) and len(data) == 2 and all(_column(v) for v in data):
        x, y = _pair(data)
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        xs, ys = [], []
        for i, batch in enumerate(data):
            bx, by = _split_batch(batch, i)
            if bx.dim() == 0:
                raise ValueError(f"data: batch {i} is a scalar; expected [batch, ...]")
            xs.append(bx)
            ys.append(by)
        if not xs:
            raise ValueError("data is empty: the iterable yielded no batches")
        if any(b is None for b in ys) and not all(b is None for b in ys):
            raise ValueError("data: some batches carry labels and some do not")
        try:
            x = torch.cat(xs)
        except RuntimeError as e:
            raise ValueError(f"data: batches have incompatible shapes ({e})") from None
        y = None if ys[0] is None else torch.cat([b.reshape(len(b), *b.shape[1:]) for b in ys])
    else:
        raise TypeError("data must be a tensor, an (inputs, labels) tuple, or an iterable of "
                        f"batches, got {type(data).__name__}")
    if y is not None and labels is not None:
        raise ValueError("labels were given twice: in data and as labels=")
    if labels is not None:
        y = _as_tensor(labels, "labels")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"data is empty: inputs have shape {tuple(x.shape)}")
    if y is not None and (y.dim() == 0 or y.shape[0] != x.shape[0]):
        raise ValueError(f"labels has {0 if y.dim() == 0 else y.shape[0]} entries but data "
                         f"has {x.shape[0]} inputs")
    return x, y
