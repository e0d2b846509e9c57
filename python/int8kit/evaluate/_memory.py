"""Memory footprint: weight bytes of a model and peak process memory during inference.

What is counted (and what is not):
- weight_bytes: every parameter and buffer, once each. A module that defines
  `weight_bytes()` (int8kit's quantized modules) reports its own state instead: the int8
  weight in the packed kernel layout, scales, bias.
  torch.ao quantized modules keep their weights in opaque packed params: we count their
  int8 weight (`weight()`), its per-channel scales/zero points and the float bias;
  fbgemm's internal prepacked copy is not visible from Python and is not counted.
- peak RSS: a process that already ran a model keeps the memory it freed resident and
  reuses it, so a second measurement in the same process shows almost no growth. Each
  model is therefore measured in a fresh Python process (peak_rss_fresh): saved with
  torch.save (torch.jit.save for TorchScript), loaded there with the parent's sys.path and
  thread count, warmed up with one sample, then run on the batch. torch allocates outside
  Python's allocator, so tracemalloc cannot see it; on Linux the kernel's high-water mark
  (VmHWM in /proc/self/status) is reset by writing 5 to /proc/self/clear_refs before the
  run, giving the peak during it. Where the reset is refused, the lifetime peak is reported
  and flagged. Off Linux, psutil's current RSS after inference is used when installed (a
  lower bound). A model that cannot be saved and loaded (a class local to a function or
  defined in __main__, a lambda) gets no number and a reason instead of a wrong number.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import warnings

import torch
from torch import nn


def _tensor_bytes(t: torch.Tensor) -> int:
    n = t.numel() * t.element_size()
    if t.is_quantized and t.qscheme() in (torch.per_channel_affine,
                                          torch.per_channel_symmetric):
        n += _tensor_bytes(t.q_per_channel_scales()) + _tensor_bytes(t.q_per_channel_zero_points())
    elif t.is_quantized:
        n += 8 + 8  # one double scale, one int64 zero point
    return n


def _ao_bytes(m: nn.Module) -> int | None:
    """int8 weight + qparams + bias of a torch.ao quantized module, None if not one."""
    if not type(m).__module__.startswith("torch.ao.nn.quantized"):
        return None
    w = getattr(m, "weight", None)
    if not callable(w):
        return None
    try:
        weight = w()
        bias = m.bias() if callable(getattr(m, "bias", None)) else None
    except Exception:
        return None
    return _tensor_bytes(weight) + (_tensor_bytes(bias) if bias is not None else 0)


def weight_bytes(model: nn.Module) -> int:
    total, seen = 0, set()
    skip_under: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p) for p in skip_under):
            continue
        own = getattr(m, "weight_bytes", None)
        own = own() if callable(own) else _ao_bytes(m)
        if own is not None:
            total += int(own)
            skip_under.append(name + "." if name else "")
            seen.update(id(t) for t in m.parameters())
            seen.update(id(t) for t in m.buffers())
            continue
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += _tensor_bytes(t)
    return total


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_during(fn) -> dict:
    """Runs fn() and returns {"peak_rss_bytes", "rss_before_bytes", "peak_increase_bytes",
    "method"}; values are None where the platform gives nothing."""
    gc.collect()
    if _status_kb("VmHWM") is not None:
        reset = _reset_peak()
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
        method = ("Linux VmHWM, reset via /proc/self/clear_refs before the run" if reset else
                  "Linux VmHWM (reset refused: lifetime peak of the process)")
        return {"peak_rss_bytes": peak * 1024, "rss_before_bytes": before * 1024,
                "peak_increase_bytes": (peak - before) * 1024 if reset else None,
                "method": method}
    try:
        import psutil
    except ImportError:
        fn()
        return {"peak_rss_bytes": None, "rss_before_bytes": None, "peak_increase_bytes": None,
                "method": "unavailable (no /proc and no psutil)"}
    proc = psutil.Process()
    before = proc.memory_info().rss
    fn()
    after = proc.memory_info().rss
    return {"peak_rss_bytes": after, "rss_before_bytes": before,
            "peak_increase_bytes": max(after - before, 0),
            "method": "psutil RSS after the run (a lower bound on the peak)"}


def _child(directory: str, model_file: str, threads: str) -> None:
    """The measuring process: load, warm up on one sample, measure two calls on the batch."""
    torch.set_num_threads(int(threads))
    path = os.path.join(directory, model_file)
    try:
        model = (torch.jit.load(path) if model_file.endswith(".jit")
                 else torch.load(path, weights_only=False))
    except Exception as e:
        raise RuntimeError(f"cannot load the model: {type(e).__name__}: {e}; its classes must "
                           "be importable, not defined in __main__ or in a function") from e
    xb = torch.load(os.path.join(directory, "input.pt"))
    model.eval()
    with torch.inference_mode():
        model(xb[:1])  # libraries, thread pools and kernel tables set up, little memory
        peak = peak_rss_during(lambda: [model(xb) for _ in range(2)])
    with open(path + ".json", "w") as f:
        json.dump(peak, f)


# The parent's sys.path, with the int8kit package it imported first: the child loads the
# same int8kit and finds the modules the models' classes live in.
_CHILD = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
          "from int8kit.evaluate._memory import _child; _child(*sys.argv[2:])")


def peak_rss_fresh(models: dict, xb: torch.Tensor, timeout: float = 600.0) -> dict:
    """{name: peak_rss_during's dict measured in a fresh process, or {"error": reason}}.
    One process at a time: two at once could push each other into swap."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = json.dumps([pkg_root] + [p for p in sys.path if p != pkg_root])
    out = {}
    with tempfile.TemporaryDirectory(prefix="int8kit-mem-") as d:
        torch.save(xb.clone(), os.path.join(d, "input.pt"))  # a view saves all its storage
        for name, model in models.items():
            jit = isinstance(model, torch.jit.ScriptModule)
            fname = f"{name}.{'jit' if jit else 'pt'}"
            try:
                with warnings.catch_warnings():  # torch.jit.save's deprecation: not the user's
                    warnings.simplefilter("ignore", DeprecationWarning)
                    (torch.jit.save if jit else torch.save)(model, os.path.join(d, fname))
            except Exception as e:  # local classes, lambdas: no number rather than a wrong one
                out[name] = {"error": f"it cannot be saved for a fresh process "
                                      f"({type(e).__name__}: {e})"}
                continue
            try:
                proc = subprocess.run(
                    [sys.executable, "-c", _CHILD, path, d, fname, str(torch.get_num_threads())],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    timeout=timeout)
            except subprocess.TimeoutExpired:
                out[name] = {"error": f"the measuring process took over {timeout:.0f} s"}
                continue
            if proc.returncode:
                last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])
                out[name] = {"error": f"the measuring process failed ({last[-1]})"}
                continue
            with open(os.path.join(d, fname + ".json")) as f:
                out[name] = json.load(f)
    return out


def state_dict_bytes(model: nn.Module) -> int | None:
    """Size of torch.save(model.state_dict()): what saving the model costs on disk."""
    import io
    buf = io.BytesIO()
    try:
        torch.save(model.state_dict(), buf)
    except Exception:
        return None
    return buf.tell()
