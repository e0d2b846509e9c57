"""torch.compile and torch.export trace QuantLinear through the int8kit::linear_dynamic op."""

import io

import torch
from torch import nn

import int8kit


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8)).eval()
    return int8kit.quantize_dynamic(model)


def _x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_custom_op_passes_opcheck():
    ql = int8kit.nn.QuantLinear.from_float(nn.Linear(12, 7))
    for per_row in (True, False):
        args = (_x(5, 12), ql.packed, ql.weight_scale, ql.bias, 7, per_row, False, 1)
        torch.library.opcheck(torch.ops.int8kit.linear_dynamic.default, args)


def test_fake_impl_gives_shape_without_touching_data():
    from torch._subclasses.fake_tensor import FakeTensorMode
    ql = int8kit.nn.QuantLinear.from_float(nn.Linear(12, 7), activation="per_tensor")
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = ql(torch.empty(3, 4, 12))
    assert y.shape == (3, 4, 7) and y.dtype == torch.float32


def test_torch_compile_fullgraph_matches_eager():
    q = _model()
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True)  # fullgraph: any graph break is an error
    with torch.inference_mode():
        for m in (4, 9):  # a second batch size exercises the dynamic-shape recompile
            x = _x(m, 24, seed=m)
            torch.testing.assert_close(compiled(x), q(x), rtol=1e-5, atol=1e-5)


def test_dynamo_sees_no_graph_break_and_keeps_the_op():
    q = _model()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(q)(_x(3, 24))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    code = explanation.graphs[0].code
    assert code.count("int8kit.linear_dynamic") == 2


def test_torch_export_traces_and_roundtrips():
    q = _model()
    x = _x(5, 24)
    ep = torch.export.export(q, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.int8kit.linear_dynamic.default) == 2
    assert torch.equal(ep.module()(x), q(x))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    assert torch.equal(loaded.module()(x), q(x))


def test_export_with_dynamic_batch_and_bf16():
    q = _model()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(q, (_x(4, 24).bfloat16(),), dynamic_shapes=({0: batch},))
    x = _x(11, 24).bfloat16()
    y = ep.module()(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, q(x))
