"""The bench's timing orders (who runs right after whom) and its JSON output."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from int8kit.bench import _harness as H
from int8kit.bench._timing import time_samples


def _kept_predecessors(calls) -> Counter:
    """(predecessor, contender) -> how many kept samples have that predecessor."""
    return Counter((prev, i) for i, prev in calls if prev is not None)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_schedule_balances_predecessors_over_every_sample_kept(n):
    blocks = 3
    calls = H.schedule(n, blocks * len(H.williams_orders(n)))
    # the predecessor named is the call just before, across round boundaries too
    assert all(prev in (None, calls[k - 1][0]) for k, (_, prev) in enumerate(calls) if k)
    counts = _kept_predecessors(calls)
    pairs = {(a, b) for a in range(n) for b in range(n) if a != b}
    assert set(counts) == pairs  # never after itself
    assert len(set(counts.values())) == 1  # every ordered pair equally often
    per = Counter(i for i, prev in calls if prev is not None)
    assert len(set(per.values())) == 1  # and as many samples each


def test_schedule_keeps_everything_for_one_contender_or_a_fixed_order():
    assert H.schedule(1, 3) == [(0, 0)] * 3
    assert [p for _, p in H.schedule(3, 2, rotate=False)] == [2, 0, 1, 2, 0, 1]


def test_time_interleaved_counts_balanced_predecessors_in_whole_blocks():
    for names in (["a", "b", "c"], ["f32", "f32_cl", "int8kit_op", "int8kit_cl"]):
        block = len(H.williams_orders(len(names)))
        res = H.time_interleaved({k: (lambda: None) for k in names}, rounds=2 * block,
                                 warmup_s=0, min_warmup_calls=1)
        for name, t in res.items():
            assert {p: v["n"] for p, v in t.after.items()} == {
                p: 2 * block // len(names) for p in names if p != name}
        res = H.time_interleaved({k: (lambda: None) for k in names}, rounds=block + 1,
                                 warmup_s=0, min_warmup_calls=1)
        assert {t.rounds for t in res.values()} == {2 * block}  # whole blocks only


def test_time_samples_calls_in_williams_orders_and_keeps_as_many_samples_each():
    seq = []
    names = ("float32", "int8kit", "torch.ao dynamic")
    fns = {k: (lambda k=k: seq.append(k)) for k in names}
    ms = time_samples(fns, repeats=10, warmup=1)
    orders = H.williams_orders(3)
    assert seq[:3] == list(names)  # the warm-up
    rounds = [seq[k:k + 3] for k in range(3, len(seq), 3)]
    assert rounds == [[names[i] for i in orders[r % 6]] for r in range(18)]
    assert {k: len(v) for k, v in ms.items()} == {k: 12 for k in names}  # 4 per 6 rounds


def test_write_json_is_strict_json(tmp_path):
    t = H.Timing(median_s=0.0, p25_s=0.0, p75_s=0.0, min_s=0.0, rounds=1, warmup_calls=1)
    path = H.write_json(tmp_path / "x.json", {
        "t": t, "inf": float("inf"), "nan": [float("nan")], "arr": np.array([1.5, np.inf]),
        "np": np.float64(2.0)})

    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")
    d = json.loads(open(path).read(), parse_constant=reject)
    assert d["t"]["spread_iqr_rel"] is None and d["t"]["rounds"] == 1
    assert (d["inf"], d["nan"], d["arr"], d["np"]) == (None, [None], [1.5, None], 2.0)
