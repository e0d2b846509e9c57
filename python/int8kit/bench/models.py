"""End-to-end bench sections: a digits CNN and a Transformer-encoder stack.

Both are embedded (no download): the digits are scikit-learn's bundled 8x8 images, the
encoder runs on random activations. Each compares float32, int8kit and torch.ao in the
same process, interleaved, and reports accuracy (digits) or output cosine (encoder)
alongside latency, so a speedup is never shown without what it cost.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from ._rows import make_row
from ._timing import summary, time_samples


def _with_threads(t: int, fn):
    prev = torch.get_num_threads()
    torch.set_num_threads(t)
    try:
        return fn()
    finally:
        torch.set_num_threads(prev)


def _int8kit_quantize(model: nn.Module, calib: torch.Tensor) -> tuple[nn.Module, str]:
    """int8kit's best available conversion: static PTQ if present, else dynamic."""
    import int8kit
    from int8kit.dynamic import DYNAMIC_MODULES
    if hasattr(int8kit, "quantize_static"):
        return int8kit.quantize_static(model, calib), "int8kit.quantize_static"
    types = {nn.Linear} | ({nn.Conv2d} if nn.Conv2d in DYNAMIC_MODULES else set())
    how = "int8kit.quantize_dynamic({" + ", ".join(sorted(t.__name__ for t in types)) + "})"
    return int8kit.quantize_dynamic(model, types), how


def _ao(fn):
    """Runs a torch.ao call without its deprecation warnings (they say nothing new here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# ------------------------------------------------------------------------- digits CNN


def digits_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10))


def digits_data(seed: int = 0):
    """(x_train, y_train, x_test, y_test): sklearn's 1797 8x8 digits scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = len(x) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def train_digits(epochs: int, seed: int = 0):
    """A trained digits CNN (fixed seed) and its test data."""
    xtr, ytr, xte, yte = digits_data(seed)
    torch.manual_seed(seed)
    model = digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model.eval(), (xtr, ytr, xte, yte)


def _ao_static(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """torch.ao eager static PTQ: stubs around the model, x86 qconfig, calibrate, convert."""
    import torch.ao.quantization as tq

    def build():
        m = nn.Sequential(tq.QuantStub(), copy.deepcopy(model), tq.DeQuantStub()).eval()
        m.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(m, inplace=True)
        with torch.inference_mode():
            m(calib)
        return tq.convert(m, inplace=True)
    return _ao(build)


def run_digits(quick: bool, threads: list[int], progress) -> dict:
    batch_sizes = (1, 64)
    progress.reset(total=2 + len(threads) * len(batch_sizes))
    model, (xtr, _, xte, yte) = train_digits(epochs=4 if quick else 15)
    progress.update(1)
    qmodel, how = _int8kit_quantize(model, xtr[:256])
    models = {"float32": model, "int8kit": qmodel}
    peer_errors = {}
    try:
        models["torch.ao static"] = _ao_static(model, xtr[:256])
    except Exception as e:  # a peer failing is reported, not fatal
        peer_errors["torch.ao static"] = f"{type(e).__name__}: {e}"
    progress.update(1)
    with torch.inference_mode():
        preds = {k: m(xte).argmax(1) for k, m in models.items()}
    accuracy = {k: float((p == yte).double().mean()) for k, p in preds.items()}
    changed = {k: int((p != preds["float32"]).sum()) for k, p in preds.items() if k != "float32"}
    rows, repeats = [], (20 if quick else 200)
    for t in threads:
        for b in batch_sizes:
            xb = xte[:b].contiguous()
            with torch.inference_mode():
                ms = _with_threads(t, lambda: time_samples(
                    {k: (lambda m=m: m(xb)) for k, m in models.items()}, repeats))
            stats = {k: summary(v) for k, v in ms.items()}
            rows.append(make_row(
                "digits", f"digits CNN b={b}", t, stats["int8kit"]["p50"],
                stats["float32"]["p50"], {k: s["p50"] for k, s in stats.items()
                                          if k not in ("int8kit", "float32")},
                latency_ms=stats,
                extra={"accuracy": accuracy, "changed_predictions": changed}))
            progress.update(1)
    return {"rows": rows, "details": {
        "accuracy": accuracy, "changed_predictions_vs_float": changed,
        "test_samples": len(yte), "int8kit_conversion": how, "peer_errors": peer_errors,
        "model": "conv 1->32 3x3, ReLU, maxpool 2, conv 32->64 3x3, ReLU, maxpool 2, "
                 "linear 256->128, ReLU, linear 128->10; sklearn load_digits, 80/20 split"}}


# ------------------------------------------------------------------ Transformer encoder


class EncoderLayer(nn.Module):
    """Post-norm BERT-style layer built from nn.Linear (not nn.TransformerEncoderLayer, whose
    fused fast path reads the weights directly), so every projection can be quantized."""

    def __init__(self, d_model: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ffn)
        self.ff2 = nn.Linear(ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2))
        x = self.norm1(x + self.out(a.transpose(1, 2).reshape(b, s, d)))
        return self.norm2(x + self.ff2(F.gelu(self.ff1(x))))


def encoder(layers: int, d_model: int = 384, heads: int = 12, ffn: int = 1536,
            seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[EncoderLayer(d_model, heads, ffn) for _ in range(layers)]).eval()


def run_transformer(quick: bool, threads: list[int], progress) -> dict:
    layers, seq, batch, d = (2, 32, 8, 384) if quick else (6, 128, 8, 384)
    progress.reset(total=1 + len(threads))
    model = encoder(layers, d)
    x = torch.randn(batch, seq, d, generator=torch.Generator().manual_seed(1))
    import int8kit
    import torch.ao.quantization as tq
    models = {"float32": model, "int8kit": int8kit.quantize_dynamic(model)}
    peer_errors = {}
    try:
        models["torch.ao dynamic"] = _ao(lambda: tq.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8))
    except Exception as e:
        peer_errors["torch.ao dynamic"] = f"{type(e).__name__}: {e}"
    with torch.inference_mode():
        ref = model(x).flatten()
        cosine = {k: float(F.cosine_similarity(m(x).flatten(), ref, dim=0))
                  for k, m in models.items() if k != "float32"}
    progress.update(1)
    rows, repeats = [], (10 if quick else 20)
    for t in threads:
        with torch.inference_mode():
            ms = _with_threads(t, lambda: time_samples(
                {k: (lambda m=m: m(x)) for k, m in models.items()}, repeats, warmup=1))
        stats = {k: summary(v) for k, v in ms.items()}
        rows.append(make_row(
            "transformer", f"encoder {layers}x{d} seq{seq} b{batch}", t,
            stats["int8kit"]["p50"], stats["float32"]["p50"],
            {k: s["p50"] for k, s in stats.items() if k not in ("int8kit", "float32")},
            latency_ms=stats, extra={"output_cosine_vs_float": cosine}))
        progress.update(1)
    return {"rows": rows, "details": {
        "layers": layers, "d_model": d, "heads": 12, "ffn": 1536, "seq": seq, "batch": batch,
        "output_cosine_vs_float": cosine, "peer_errors": peer_errors,
        "model": "post-norm encoder layers of nn.Linear + scaled_dot_product_attention, "
                 "random weights (seed 0) and inputs (seed 1)"}}
