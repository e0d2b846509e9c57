"""torch.compile and torch.export trace the quantized modules through int8kit's custom ops
(linear_dynamic; conv2d_dynamic in test_quant_conv.py; linear_static and conv2d_static)."""

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


def test_torch_compile_with_grad_enabled_and_float_parameters_left():
    """Outside inference_mode, a float layer left in the model (its parameters require
    grad) feeds the int8 op a tensor that requires grad; the ops have no gradient (eager
    outputs never require one), so the traced graph must not ask for one either."""
    torch.manual_seed(0)
    q = int8kit.quantize_dynamic(nn.Sequential(nn.LayerNorm(24), nn.Linear(24, 8)).eval())
    torch._dynamo.reset()
    x = _x(4, 24)
    y = torch.compile(q, fullgraph=True)(x)
    assert not y.requires_grad
    torch.testing.assert_close(y, q(x), rtol=1e-4, atol=1e-4)  # the compiled LayerNorm


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


def _static_model():
    """A calibrated static model whose children pass uint8 to each other when eager
    (QuantSequential), with a float activation (ReLU6) that breaks the chain."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
                          nn.ReLU6(), nn.Linear(10, 4)).eval()
    calib = [_x(4, 3, 16, 16, seed=s) for s in range(3)]
    return int8kit.quantize_static(model, calib)


def test_static_custom_ops_pass_opcheck():
    sl = int8kit.nn.StaticQuantLinear.from_float(nn.Linear(12, 7), 0.02, 120)
    torch.library.opcheck(torch.ops.int8kit.linear_static.default,
                          (_x(5, 12), sl.packed, sl.weight_scale, sl.bias, sl.input_scale,
                           sl.input_zero_point, 7, True, 1))
    sc = int8kit.nn.StaticQuantConv2d.from_float(nn.Conv2d(4, 6, 3, padding=1), 0.03, 128)
    for channels_last in (False, True):
        torch.library.opcheck(torch.ops.int8kit.conv2d_static.default,
                              (_x(2, 4, 7, 6), sc.packed, sc.weight_scale, sc.bias, sc._params,
                               sc.input_scale, sc.input_zero_point, False, 1, channels_last))


def test_static_model_compiles_fullgraph_bit_identical_to_eager():
    q = _static_model()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(q)(_x(2, 3, 16, 16))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(q, fullgraph=True)
    with torch.inference_mode():
        for n in (2, 5):  # the second batch size recompiles with a dynamic batch
            x = _x(n, 3, 16, 16, seed=n)
            want = q(x)  # eager: uint8 handed between the linked layers
            assert torch.equal(compiled(x), want)
            assert torch.equal(compiled(x.contiguous(memory_format=torch.channels_last)), want)


def test_static_model_exports_through_its_ops():
    q = _static_model()
    x = _x(3, 3, 16, 16)
    ep = torch.export.export(q, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.int8kit.conv2d_static.default) == 2
    assert targets.count(torch.ops.int8kit.linear_static.default) == 2
    assert torch.equal(ep.module()(x), q(x))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    assert torch.equal(torch.export.load(buf).module()(x), q(x))
