"""Observers against hand-computed ranges; QConfig / QuantConfig validation and precedence."""

import pytest
import torch
from torch import nn

from int8kit.observers import (HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                               MSEObserver)
from int8kit.qconfig import QConfig, QuantConfig


def _fq_mse(x, lo, hi):
    """Squared error of quantizing x (uint8 asymmetric) with range [lo, hi], in float64."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    s = (hi - lo) / 255
    z = round(-lo / s)
    q = torch.clamp(torch.round(x.double() / s) + z, 0, 255)
    return float(((x.double() - (q - z) * s) ** 2).sum())


def test_minmax_per_tensor_hand_computed():
    o = MinMaxObserver()
    o(torch.tensor([1.0, -2.0, 3.0]))
    o(torch.tensor([[5.0, 0.0]]))
    lo, hi = o.calculate_range()
    assert (lo.item(), hi.item()) == (-2.0, 5.0)
    scale, zp = o.calculate_qparams()
    assert scale.item() == pytest.approx(7.0 / 255)
    assert zp.item() == 73  # 0 - round(-2 / (7/255)) = round(72.86)


def test_minmax_per_channel_and_range_widened_to_zero():
    o = MinMaxObserver(axis=1)
    o(torch.tensor([[1.0, -3.0], [2.0, -1.0]]))
    lo, hi = o.calculate_range()
    assert lo.tolist() == [1.0, -3.0] and hi.tolist() == [2.0, -1.0]
    scale, zp = o.calculate_qparams()
    # Ranges include 0: channel 0 is [0, 2], channel 1 is [-3, 0].
    assert scale.tolist() == pytest.approx([2.0 / 255, 3.0 / 255])
    assert zp.tolist() == [0, 255]


def test_symmetric_signed_weights_per_channel():
    o = MinMaxObserver(symmetric=True, signed=True, axis=0)
    o(torch.tensor([[-0.5, 1.27], [2.54, -0.1]]))
    scale, zp = o.calculate_qparams()
    assert scale.tolist() == pytest.approx([1.27 / 127.5, 2.54 / 127.5])
    assert zp.tolist() == [0, 0]


def test_moving_average_hand_computed():
    o = MovingAverageMinMaxObserver(averaging_constant=0.5)
    o(torch.tensor([-2.0, 4.0]))          # first batch taken as is
    o(torch.tensor([0.0, 8.0]))           # -2 + 0.5 * (0 - -2) = -1; 4 + 0.5 * 4 = 6
    lo, hi = o.calculate_range()
    assert (lo.item(), hi.item()) == (-1.0, 6.0)


def test_histogram_percentile_matches_quantiles_within_a_bin():
    x = torch.arange(1000.0)
    o = HistogramObserver(percentile=99.0, bins=1000)
    o(x)
    lo, hi = o.calculate_range()
    width = 999.0 / 1000
    q_lo, q_hi = torch.quantile(x, torch.tensor([0.01, 0.99])).tolist()
    assert abs(lo.item() - q_lo) <= width and abs(hi.item() - q_hi) <= width
    assert hi.item() < 999.0  # it did clip


def test_histogram_full_percentile_is_minmax_and_counts_survive_rebinning():
    o = HistogramObserver(percentile=100.0, bins=64)
    o(torch.rand(1000))
    o(torch.rand(500) * 10 - 2)  # widens the range on both sides: old bins move
    assert o.histogram.sum().item() == 1500
    lo, hi = o.calculate_range()
    assert lo.item() == o.min_val.item() and hi.item() == o.max_val.item()


def test_histogram_per_channel():
    x = torch.stack([torch.arange(1000.0), 2 * torch.arange(1000.0)])  # [2, 1000]
    o = HistogramObserver(percentile=99.0, bins=1000, axis=0)
    o(x)
    lo, hi = o.calculate_range()
    assert hi[1].item() == pytest.approx(2 * hi[0].item(), rel=1e-5)
    assert hi[0].item() == pytest.approx(989.01, abs=1.0)


def test_mse_keeps_exactly_representable_data_unclipped():
    # Integers 0..255: the full range has scale 1 and zero error; any clipping adds error.
    o = MSEObserver()
    o(torch.arange(256.0))
    lo, hi = o.calculate_range()
    assert (lo.item(), hi.item()) == (0.0, 255.0)


def test_mse_clips_heavy_tails_and_beats_minmax():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((10_000,))
    o = MSEObserver()
    o(x)
    lo, hi = (v.item() for v in o.calculate_range())
    assert lo > x.min().item() and hi < x.max().item()
    err, err_minmax = _fq_mse(x, lo, hi), _fq_mse(x, x.min().item(), x.max().item())
    assert err < err_minmax
    # Within 1% of the best range over a finer grid searched directly on the raw data.
    grid = torch.linspace(0.05, 1.0, 20)
    best = min(_fq_mse(x, a * x.min().item(), b * x.max().item()) for a in grid for b in grid)
    assert err <= 1.01 * best


def test_mse_per_channel_symmetric_clips_only_the_outlier_channel():
    torch.manual_seed(0)
    w = torch.rand(2, 4000) * 2 - 1                        # uniform: no clipping pays off
    w[1] = torch.distributions.StudentT(1.5).sample((4000,))
    o = MSEObserver(symmetric=True, signed=True, axis=0)
    o(w)
    lo, hi = o.calculate_range()
    assert hi[0].item() == pytest.approx(w[0].max().item(), rel=0.03)
    assert hi[1].item() < 0.9 * w[1].abs().max().item()


@pytest.mark.parametrize("cls", [MinMaxObserver, MovingAverageMinMaxObserver,
                                 HistogramObserver, MSEObserver])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_names_the_layer(cls, bad):
    o = cls(name="features.3")
    with pytest.raises(ValueError, match=r"features\.3.*NaN or Inf"):
        o(torch.tensor([1.0, bad, 2.0]))


def test_bad_input_errors():
    o = MinMaxObserver(name="fc")
    with pytest.raises(RuntimeError, match="fc.*no data"):
        o.calculate_qparams()
    with pytest.raises(TypeError, match="floating"):
        o(torch.ones(3, dtype=torch.int32))
    pc = MinMaxObserver(axis=1)
    pc(torch.ones(2, 3))
    with pytest.raises(ValueError, match="channels"):
        pc(torch.ones(2, 4))
    with pytest.raises(ValueError, match="axis"):
        MinMaxObserver(axis=3)(torch.ones(2, 2))
    with pytest.raises(ValueError, match="bits"):
        MinMaxObserver(bits=9)
    with pytest.raises(ValueError, match="percentile"):
        HistogramObserver(percentile=30)
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0)


def test_qconfig_rejects_schemes_the_kernels_cannot_run():
    with pytest.raises(ValueError, match="activation"):
        QConfig(activation=MinMaxObserver.with_args(axis=1))
    with pytest.raises(ValueError, match="activation"):
        QConfig(activation=MinMaxObserver.with_args(signed=True))
    with pytest.raises(ValueError, match="weight"):
        QConfig(weight=MinMaxObserver.with_args(axis=0))  # asymmetric unsigned weights
    with pytest.raises(TypeError, match="factory"):
        QConfig(activation="minmax")
    with pytest.raises(TypeError, match="QConfig"):
        QuantConfig().set_module_type(nn.Linear, "x")


def test_quant_config_precedence():
    a = QConfig(activation=HistogramObserver.with_args())
    b = QConfig(activation=MinMaxObserver.with_args())
    cfg = QuantConfig().set_module_type(nn.Linear, a).set_module_name("head", b) \
                       .set_module_name("head.skip", None)
    lin = nn.Linear(2, 2)
    assert cfg.qconfig_for("body.fc", lin) is a               # type
    assert cfg.qconfig_for("head.fc", lin) is b               # name beats type
    assert cfg.qconfig_for("head.skip", lin) is None          # longest name wins
    assert cfg.qconfig_for("headx", lin) is a                 # a prefix must end at a dot
    assert cfg.qconfig_for("c", nn.Conv2d(1, 1, 1)) is cfg.global_qconfig
    with pytest.raises(ValueError, match="no module named"):
        cfg.check_names(["", "body", "body.fc"])


@pytest.mark.parametrize("data,expected", [
    (torch.full((8, 4), 2.5), (0.0, 2.5)),     # constant (e.g. a saturated sigmoid)
    (torch.full((8, 4), -7.0), (-7.0, 0.0)),
    (torch.linspace(0.5, 1.0, 256), (0.0, 1.0)),  # all positive, min > min_fraction * max
])
def test_mse_range_of_one_signed_data_includes_zero(data, expected):
    o = MSEObserver()
    o(data)
    lo, hi = o.calculate_range()
    assert (float(lo), float(hi)) == pytest.approx(expected, abs=1e-6)


def test_mse_one_signed_data_per_channel():
    x = torch.stack([torch.linspace(0.5, 1.0, 64), torch.linspace(-3.0, -2.0, 64)])
    o = MSEObserver(axis=0)
    o(x)
    lo, hi = o.calculate_range()
    assert lo.tolist() == pytest.approx([0.0, -3.0]) and hi.tolist() == pytest.approx([1.0, 0.0])


@pytest.mark.parametrize("cls", [MinMaxObserver, MovingAverageMinMaxObserver,
                                 HistogramObserver, MSEObserver])
def test_empty_tensors_are_not_observed(cls):
    o = cls(name="experts.1")
    empty = torch.empty(0, 3)
    assert o(empty) is empty and not o.calibrated  # an expert that got no tokens
    o(torch.tensor([[-1.0, 0.5, 2.0]]))
    before = [float(v) for v in o.calculate_range()]
    o(empty)
    assert o.batches == 1 and [float(v) for v in o.calculate_range()] == before


@pytest.mark.parametrize("cls", [MinMaxObserver, MovingAverageMinMaxObserver,
                                 HistogramObserver, MSEObserver])
def test_state_dict_restores_a_calibrated_observer_into_a_fresh_one(cls):
    torch.manual_seed(0)
    o = cls()
    for _ in range(3):
        o(torch.randn(64) * 2 + 1)
    fresh = cls()
    fresh.load_state_dict(o.state_dict())
    assert fresh.batches == 3
    assert [float(v) for v in fresh.calculate_qparams()] == \
           [float(v) for v in o.calculate_qparams()]
    # A cached range is not reused after a load (the batch count can be the same).
    other = cls()
    other(torch.randn(64) * 5 - 3)
    one = cls()
    one(torch.randn(64))
    one.calculate_range()
    one.load_state_dict(other.state_dict())
    assert [float(v) for v in one.calculate_range()] == \
           [float(v) for v in other.calculate_range()]


def test_state_dict_with_other_bins_is_refused():
    o = HistogramObserver(bins=32)
    o(torch.randn(16))
    with pytest.raises(RuntimeError, match="histogram has 32 bins"):
        HistogramObserver(bins=64).load_state_dict(o.state_dict())
