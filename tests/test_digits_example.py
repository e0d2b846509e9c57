"""The shipped digits example: int8kit static PTQ keeps accuracy within 1 point of float."""

import importlib.util
from pathlib import Path

import pytest
import torch

import int8kit
from int8kit.static import QuantSequential

pytest.importorskip("sklearn")
_PATH = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("digits_cnn", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_digits_int8_accuracy_within_one_point(example):
    model, (x_train, y_train, x_test, y_test) = example.trained_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc_float = (example.predict(model, x_test) == y_test).float().mean().item() * 100
    assert acc_float > 95.0  # the float model actually learned
    q = example.int8kit_static(model, x_train[:512])
    assert type(q) is QuantSequential
    assert all(r.converted for r in q.int8kit_report.layers) and len(q.int8kit_report.layers) == 4
    pred = example.predict(q, x_test)
    acc_int8 = (pred == y_test).float().mean().item() * 100
    assert abs(acc_int8 - acc_float) <= 1.0, (acc_float, acc_int8)
    # The uint8 chain and the float hand-off give the same logits on the test set.
    plain = int8kit.quantize_static(model, list(x_train[:512].split(64)), handoff=False)
    with torch.no_grad():
        assert torch.equal(q(x_test), plain(x_test))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
