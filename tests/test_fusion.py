"""Fusion: folded BN and fused ReLU give the original float outputs; the input is untouched."""

import copy

import pytest
import torch
from torch import nn

from int8kit.fusion import ConvReLU2d, LinearBN1d, LinearReLU, find_fusable, fuse_modules


def _randomize_bn(bn):
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.3, 3.0)
        if bn.affine:
            bn.weight.normal_()
            bn.bias.normal_()
    return bn


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


CASES = [
    ("conv+bn", lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), _randomize_bn(nn.BatchNorm2d(6))),
     nn.Conv2d, (2, 3, 7, 7)),
    ("conv(no bias)+bn(no affine)", lambda: nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False), _randomize_bn(nn.BatchNorm2d(6, affine=False))),
     nn.Conv2d, (2, 3, 7, 7)),
    ("conv+bn+relu", lambda: nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), _randomize_bn(nn.BatchNorm2d(6)),
                                           nn.ReLU()), ConvReLU2d, (2, 3, 9, 9)),
    ("conv+relu", lambda: nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU()), ConvReLU2d, (2, 3, 5, 5)),
    ("linear+relu", lambda: nn.Sequential(nn.Linear(8, 5), nn.ReLU()), LinearReLU, (4, 8)),
    ("linear+bn1d", lambda: nn.Sequential(nn.Linear(8, 5), _randomize_bn(nn.BatchNorm1d(5))),
     LinearBN1d, (4, 8)),
    ("linear+bn1d+relu", lambda: nn.Sequential(nn.Linear(8, 5), _randomize_bn(nn.BatchNorm1d(5)),
                                               nn.ReLU()), LinearReLU, (4, 8)),
]


@pytest.mark.parametrize("name,build,fused_type,shape", CASES, ids=[c[0] for c in CASES])
def test_fused_model_matches_original(name, build, fused_type, shape):
    torch.manual_seed(0)
    model = build().eval()
    before = copy.deepcopy(model)
    fused = fuse_modules(model)
    assert type(fused[0]) is fused_type
    assert all(type(m) is nn.Identity for m in list(fused)[1:])
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in fused.modules())
    x = torch.randn(shape)
    with torch.no_grad():
        y, yf = model(x), fused(x)
    torch.testing.assert_close(yf, y, rtol=1e-5, atol=1e-5)
    assert _same_state(model, before) and type(model[0]) is type(before[0])  # untouched


def test_patterns_found_in_nested_sequentials_only():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU()),
        nn.Flatten(), nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3))
    assert sorted(find_fusable(model)) == [["0.0", "0.1", "0.2"], ["0.3", "0.4"], ["2", "3"]]


def test_explicit_groups_outside_sequential():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(2, 4, 3), _randomize_bn(nn.BatchNorm2d(4)), nn.ReLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    torch.manual_seed(1)
    net = Net().eval()
    assert find_fusable(net) == []  # attribute order is not data flow: not guessed
    fused = fuse_modules(net, [["conv", "bn", "act"]])
    assert type(fused.conv) is ConvReLU2d and type(fused.bn) is nn.Identity
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-5, atol=1e-5)
    assert type(net.conv) is nn.Conv2d


def test_inplace_fuses_the_given_model():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).eval()
    out = fuse_modules(model, inplace=True)
    assert out is model and type(model[0]) is LinearReLU


def test_errors_leave_model_untouched():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(3, 3), nn.ReLU())
    model.train()
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="training mode"):
        fuse_modules(model, inplace=True)
    assert type(model[0]) is nn.Conv2d and _same_state(model, before)
    model.eval()
    with pytest.raises(ValueError, match="cannot fuse"):
        fuse_modules(model, [["0", "2"]])
    with pytest.raises(ValueError, match="no module named"):
        fuse_modules(model, [["0", "nope"]])
    with pytest.raises(TypeError, match="group"):
        fuse_modules(model, ["01"])
    with pytest.raises(ValueError, match="features"):
        fuse_modules(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3)).eval(), [["0", "1"]])


def test_shared_modules_fuse_per_slot_and_keep_float_outputs():
    torch.manual_seed(0)
    relu, lin = nn.ReLU(), nn.Linear(6, 6)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            # one ReLU object in two slots, one Linear in a fused slot and used again outside
            self.seq = nn.Sequential(lin, relu, nn.Linear(6, 6), relu)
            self.lin = lin

        def forward(self, x):
            return self.lin(self.seq(x))

    net = Net().eval()
    assert find_fusable(net) == [["seq.0", "seq.1"], ["seq.2", "seq.3"]]
    fused = fuse_modules(net)
    assert type(fused.seq[0]) is LinearReLU and type(fused.seq[3]) is nn.Identity
    assert type(fused.lin) is nn.Linear  # the use outside the group is not fused
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-6, atol=1e-6)


def test_inplace_swaps_only_the_fused_slots():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2)).eval()
    head, weight, conv = model[2], model[2].weight, model[0][0]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fuse_modules(model, inplace=True)
    assert type(model[0][0]) is ConvReLU2d and model[2] is head and model[2].weight is weight
    before = weight.detach().clone()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    assert not torch.equal(before, model[2].weight)  # the optimizer still trains the head
    assert model[0][0].conv is not conv  # the fused module is built on a copy
    with pytest.raises(ValueError, match="more than one group"):
        fuse_modules(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.ReLU()), [["0", "1"], ["0", "2"]])


def test_auto_fusion_skips_bn_it_cannot_fold_explicit_groups_raise():
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                             nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()).eval()
    # BatchNorm1d over dim 1 (length 5) of a [N, 5, 8] Linear output: valid, not foldable
    over_length = nn.Sequential(nn.Linear(8, 8), _randomize_bn(nn.BatchNorm1d(5))).eval()
    assert find_fusable(no_stats) == [["3", "4"]]
    assert find_fusable(over_length) == []
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(fuse_modules(over_length)(x), over_length(x))
    with pytest.raises(ValueError, match="no running statistics.*fuse=False"):
        fuse_modules(no_stats, [["0", "1", "2"]])


def test_folded_linear_bn1d_refuses_input_it_would_get_wrong():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), _randomize_bn(nn.BatchNorm1d(8))).eval()
    fused = fuse_modules(model)
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"0 \+ 1: BatchNorm1d.*2-D.*\(4, 8, 8\).*fuse=False"):
        fused(torch.randn(4, 8, 8))  # BatchNorm1d normalizes dim 1 here, not the features
