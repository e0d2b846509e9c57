"""Static post-training quantization of the classic small MNIST CNN, on scikit-learn's
bundled 8x8 digits (no download; trains in seconds with a fixed seed).

    conv 1->32 3x3 pad 1, ReLU, max-pool 2, conv 32->64 3x3 pad 1, ReLU, max-pool 2,
    linear 256->128, ReLU, linear 128->10

Compares float, int8kit static PTQ and torch.ao's eager static PTQ (x86 backend):
accuracy, predictions that changed versus float, and latency (median over repeats).

    PYTHONPATH=python python examples/digits_cnn.py
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import int8kit

SEED = 0


def load_data():
    """(x_train, y_train, x_test, y_test): images [N, 1, 8, 8] scaled to [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25,
                                           random_state=SEED, stratify=digits.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 8x8 -> 4x4
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 4x4 -> 2x2
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 128), nn.ReLU(),
        nn.Linear(128, 10),
    )


def train(model: nn.Module, x, y, epochs: int = 12, batch: int = 64) -> nn.Module:
    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small train faster without thread hand-offs
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), batch):
                j = perm[i:i + batch]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[j]), y[j]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def trained_model():
    """A float model trained with a fixed seed, and the data split."""
    x_train, y_train, x_test, y_test = load_data()
    torch.manual_seed(SEED)
    model = train(build_model(), x_train, y_train)
    return model, (x_train, y_train, x_test, y_test)


@torch.no_grad()
def predict(model, x) -> torch.Tensor:
    return model(x).argmax(1)


def int8kit_static(model, x_calib):
    """int8kit: fuse, observe, calibrate (batches of 64), convert."""
    return int8kit.quantize_static(model, list(x_calib.split(64)))


def torch_ao_static(model, x_calib):
    """torch.ao eager mode: stubs around the model, fuse, x86 qconfig, calibrate, convert."""
    import torch.ao.quantization as tq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager-mode torch.ao prints deprecation warnings
        torch.backends.quantized.engine = "x86"
        m = copy.deepcopy(model).eval()
        m = tq.fuse_modules(m, [["0", "1"], ["3", "4"], ["7", "8"]])
        wrapped = nn.Sequential(tq.QuantStub(), m, tq.DeQuantStub()).eval()
        wrapped.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(wrapped, inplace=True)
        with torch.no_grad():
            for xb in x_calib.split(64):
                wrapped(xb)
        tq.convert(wrapped, inplace=True)
    return wrapped


@torch.no_grad()
def median_latency_ms(models: dict, x, repeats: int = 50) -> dict:
    """Median wall time per call, the models interleaved so drift affects all alike."""
    times = {k: [] for k in models}
    for m in models.values():
        m(x)  # warm-up
    for _ in range(repeats):
        for k, m in models.items():
            t0 = time.perf_counter()
            m(x)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    model, (x_train, y_train, x_test, y_test) = trained_model()
    print(f"trained float model in {time.perf_counter() - t0:.1f} s "
          f"({len(x_train)} train / {len(x_test)} test images)")
    x_calib = x_train[:512]
    models = {"float": model,
              "int8kit static": int8kit_static(model, x_calib),
              "torch.ao static": torch_ao_static(model, x_calib)}
    print(models["int8kit static"].int8kit_report)
    ref = predict(model, x_test)
    print(f"\n{'model':16} {'accuracy':>9} {'flips':>6} {'batch 1 ms':>11} "
          f"{'batch ' + str(len(x_test)) + ' ms':>13}")
    lat1 = median_latency_ms(models, x_test[:1], repeats=200)
    latb = median_latency_ms(models, x_test, repeats=30)
    for name, m in models.items():
        pred = predict(m, x_test)
        acc = (pred == y_test).float().mean().item() * 100
        flips = int((pred != ref).sum())
        print(f"{name:16} {acc:8.2f}% {flips:6d} {lat1[name]:11.3f} {latb[name]:13.3f}")
    print(f"\nthreads={torch.get_num_threads()}, int8kit path={int8kit.ops.get_isa()}")


if __name__ == "__main__":
    main()
