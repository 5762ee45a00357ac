"""pyfast.convert.convert_spikingjelly: a SpikingJelly conv SNN and its converted copy give the same spikes (exactly)
and gradients, keep SpikingJelly's membrane state across calls (reset_net, detach_net, a smaller batch), compile
whole, and say which nodes they leave and why."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from pyfast.nn import IF, LIF
from pyfast.testing import assert_close, lif_inputs_with_margin

neuron = pytest.importorskip("spikingjelly.activation_based.neuron", reason="pip install -r requirements/peers.txt")
functional = pytest.importorskip("spikingjelly.activation_based.functional")
layer = pytest.importorskip("spikingjelly.activation_based.layer")
surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

# After the skips: these import SpikingJelly.
from pyfast.convert import convert_spikingjelly
from pyfast.convert.spikingjelly import SpikingJellyNeuron

SJ_SURROGATES = {"sigmoid": lambda: surrogate.Sigmoid(alpha=4.0), "atan": lambda: surrogate.ATan(alpha=2.0)}
NODES = (0, 3, 6, 9)  # positions of the neurons in sj_net
SHAPE = (4, 3, 2, 6, 6)  # [T, B, C, H, W]
COMBOS = list(itertools.product(SJ_SURROGATES, (0.0, None), (True, False), (False, True)))


def sj_net(surrogate_name="sigmoid", v_reset=0.0, decay_input=True, detach_reset=False) -> nn.Sequential:
    """A multi-step SpikingJelly conv SNN, [T, B, 2, 6, 6] -> spikes [T, B, 5]: LIF, conv-BN-PLIF, conv-BN-IF,
    linear-LIF. The BN scales and linear weights are raised so that every node fires. The convolutions have no bias:
    before a training-mode BN its gradient is 0 up to rounding, which no tolerance can compare."""
    torch.manual_seed(0)
    kw = {"v_reset": v_reset, "surrogate_function": SJ_SURROGATES[surrogate_name](), "detach_reset": detach_reset,
          "step_mode": "m"}
    net = nn.Sequential(
        neuron.LIFNode(tau=2.0, decay_input=decay_input, **kw),
        layer.Conv2d(2, 4, 3, padding=1, bias=False, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"),
        neuron.ParametricLIFNode(init_tau=3.0, decay_input=decay_input, **kw),
        layer.Conv2d(4, 4, 3, padding=1, bias=False, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"),
        neuron.IFNode(**kw),
        layer.Flatten(step_mode="m"), layer.Linear(4 * 6 * 6, 5, step_mode="m"),
        neuron.LIFNode(tau=4 / 3, decay_input=decay_input, v_threshold=0.5, **kw),
    )
    with torch.no_grad():
        net[2].weight.fill_(3.0)
        net[5].weight.fill_(3.0)
        net[8].weight.mul_(4.0)
    return net


def net_input(v_reset=0.0, decay_input=True, seed=1, shape=SHAPE) -> torch.Tensor:
    """Input of sj_net, placed away from the first neuron's threshold (its spikes are exact by construction; the
    later nodes see the same float32 currents in both nets)."""
    return lif_inputs_with_margin(shape, k=0.5, v_th=1.0, v_reset=v_reset, decay_input=decay_input,
                                  generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def trace(net: nn.Module, inputs: list[torch.Tensor], between=None):
    """Run ``net`` on each input in turn (``between(net)`` between calls), then backward a weighted sum of every
    output. Returns every node's spikes of every call, and the gradients of the inputs and the parameters."""
    spikes = []
    hooks = [net[i].register_forward_hook(lambda module, args, out: spikes.append(out)) for i in NODES]
    leaves = [x.clone().requires_grad_() for x in inputs]
    loss = 0.0
    for i, x in enumerate(leaves):
        if i and between is not None:
            between(net)
        out = net(x)
        loss = loss + (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(10 + i))).sum()
    loss.backward()
    for hook in hooks:
        hook.remove()
    return spikes, [x.grad for x in leaves] + [p.grad for p in net.parameters()]


def assert_same_run(got, want):
    (spikes, grads), (want_spikes, want_grads) = got, want
    assert len(spikes) == len(want_spikes)
    for i, (s, s_want) in enumerate(zip(spikes, want_spikes)):
        assert torch.equal(s, s_want), f"spikes of output {i} differ from SpikingJelly"
    assert len(grads) == len(want_grads)
    for i, (g, g_want) in enumerate(zip(grads, want_grads)):
        assert_close(g, g_want, msg=f"gradient {i} differs from SpikingJelly")


@pytest.mark.parametrize(("surrogate_name", "v_reset", "decay_input", "detach_reset"), COMBOS)
def test_converted_net_gives_spikingjelly_spikes_and_gradients(surrogate_name, v_reset, decay_input, detach_reset):
    net = sj_net(surrogate_name, v_reset, decay_input, detach_reset)
    converted = convert_spikingjelly(copy.deepcopy(net))
    assert [type(converted[i].neuron) for i in NODES] == [LIF, LIF, IF, LIF]
    x = net_input(v_reset, decay_input)

    want = trace(net, [x])
    assert all(s.sum() > 0 for s in want[0]), "every node of the test net must fire"
    assert_same_run(trace(converted, [x]), want)


@pytest.mark.parametrize("between", [None, functional.reset_net, functional.detach_net],
                         ids=["nothing", "reset_net", "detach_net"])
def test_membrane_is_kept_across_calls_as_in_spikingjelly(between):
    # Three calls; the third has a smaller batch, from which SpikingJelly's nodes start at the reset value.
    net = sj_net(v_reset=None)
    converted = convert_spikingjelly(copy.deepcopy(net))
    inputs = [net_input(None, seed=1), net_input(None, seed=2), net_input(None, seed=3, shape=(4, 2, 2, 6, 6))]

    got = trace(converted, inputs, between)
    assert_same_run(got, trace(net, inputs, between))
    fresh = convert_spikingjelly(copy.deepcopy(sj_net(v_reset=None)))
    second_alone = trace(fresh, inputs[1:2])[0]
    carried = not all(torch.equal(a, b) for a, b in zip(got[0][len(NODES):2 * len(NODES)], second_alone))
    assert carried == (between is not functional.reset_net)  # the state reached the second call unless reset


def test_reset_net_resets_the_new_nodes_after_it_cached_the_old_ones():
    # reset_net caches a network's resettable modules; nodes replaced while still referenced elsewhere (here:
    # old_nodes) would stay in that cache and be reset instead of the new ones.
    net = sj_net()
    functional.reset_net(net)
    old_nodes = [net[i] for i in NODES]
    convert_spikingjelly(net)
    assert all(isinstance(net[i], SpikingJellyNeuron) for i in NODES) and len(old_nodes) == len(NODES)
    x = net_input()
    first = net(x)
    functional.reset_net(net)
    assert torch.equal(net(x), first)


def test_conversion_carries_the_membrane_of_a_node_that_has_run():
    net = sj_net()
    x1, x2 = net_input(seed=1), net_input(seed=2)
    with torch.no_grad():
        net(x1)
        converted = convert_spikingjelly(copy.deepcopy(net))
        assert torch.equal(converted(x2), net(x2))


def test_compiled_converted_net_matches_spikingjelly():
    net = sj_net(surrogate_name="atan", v_reset=None, detach_reset=True)
    converted = convert_spikingjelly(copy.deepcopy(net))
    compiled = torch.compile(converted, fullgraph=True)
    x1, x2 = net_input(None, seed=1), net_input(None, seed=2)
    for model in (net, compiled):  # both nets see the same calls: BN's running statistics stay equal
        outputs = [model(x1), model(x2)]
        functional.reset_net(converted if model is compiled else net)
        outputs.append(model(x1))
        if model is net:
            want = outputs
    for got, expected in zip(outputs, want):
        assert torch.equal(got, expected)
    assert torch.equal(outputs[2], outputs[0]) and not torch.equal(outputs[1], outputs[0])
    # and the gradients of a compiled call
    functional.reset_net(net)
    functional.reset_net(converted)
    x = x1.clone().requires_grad_()
    x_want = x1.clone().requires_grad_()
    compiled(x).sum().backward()
    net(x_want).sum().backward()
    assert_close(x.grad, x_want.grad)
    assert_close(converted[3].neuron.w.grad, net[3].w.grad)


def test_keeps_parameter_objects_training_mode_and_dtype():
    net = sj_net(v_reset=None).double().eval()
    plif_w = net[3].w
    converted = convert_spikingjelly(copy.deepcopy(net))
    converted_w = converted[3].neuron.w
    converted = convert_spikingjelly(net)  # in place: the same Parameter object
    assert converted is net and net[3].neuron.w is plif_w and converted_w is not plif_w
    assert "3.neuron.w" in dict(net.named_parameters())
    assert all(not m.training for m in net.modules())
    reference = sj_net(v_reset=None).double().eval()
    x = net_input(None).double()
    with torch.no_grad():
        got, want = net(x), reference(x)
    assert got.dtype == torch.float64 and torch.equal(got, want)


def test_a_node_by_itself_is_converted_and_returned():
    node = neuron.LIFNode(tau=2.0, v_reset=None, step_mode="m")
    converted = convert_spikingjelly(node)
    assert isinstance(converted, SpikingJellyNeuron) and converted.neuron.v_reset is None
    x = net_input(None, shape=(4, 7))
    assert torch.equal(converted(x), node(x))


def test_single_step_mode_is_refused_by_a_converted_node():
    converted = convert_spikingjelly(sj_net())
    with pytest.raises(ValueError, match="step_mode can only be"):
        functional.set_step_mode(converted, "s")


class _MyLIF(neuron.LIFNode):
    pass


def test_verbose_prints_one_line_of_what_was_converted_and_what_was_left(capsys):
    net = nn.Sequential(
        neuron.LIFNode(step_mode="m"),
        neuron.ParametricLIFNode(step_mode="m"),
        nn.Sequential(neuron.IFNode(step_mode="m"), neuron.LIFNode(step_mode="s")),
        neuron.LIFNode(surrogate_function=surrogate.PiecewiseQuadratic(), step_mode="m"),
        neuron.LIFNode(surrogate_function=surrogate.Sigmoid(spiking=False), step_mode="m"),
        neuron.IFNode(store_v_seq=True, step_mode="m"),
        neuron.IFNode(v_threshold=-1.0, step_mode="m"),
        _MyLIF(step_mode="m"),
        nn.Linear(2, 2),
        neuron.ParametricLIFNode(step_mode="m"),
    )
    net[-1]._neuron_precision = (torch.float16, "fp32", "fp32")  # what spikingjelly...precision sets
    convert_spikingjelly(net, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [(
        "convert_spikingjelly: converted 3 modules (1 LIFNode, 1 ParametricLIFNode, 1 IFNode); left 7: "
        "2.1 (LIFNode: step_mode='s' (pyfast's neurons are multi-step)), "
        "3 (LIFNode: surrogate PiecewiseQuadratic (pyfast has Sigmoid and ATan)), "
        "4 (LIFNode: surrogate Sigmoid(spiking=False) fires its primitive function, not spikes), "
        "5 (IFNode: store_v_seq=True (pyfast's neurons return the final membrane only)), "
        "6 (IFNode: IF: v_threshold must be a finite number > 0, got -1.0), "
        "7 (_MyLIF: a subclass of LIFNode, whose dynamics may differ), "
        "9 (ParametricLIFNode: explicit neuron precision (spikingjelly.activation_based.precision))"
    )]
    assert [type(m).__name__ for m in net] == ["SpikingJellyNeuron", "SpikingJellyNeuron", "Sequential", "LIFNode",
                                               "LIFNode", "IFNode", "IFNode", "_MyLIF", "Linear",
                                               "ParametricLIFNode"]
    assert isinstance(net[2][0], SpikingJellyNeuron) and isinstance(net[2][1], neuron.LIFNode)


def test_verbose_summary_of_a_model_without_nodes(capsys):
    convert_spikingjelly(nn.Linear(2, 2), verbose=True)
    assert capsys.readouterr().out == "convert_spikingjelly: converted 0 modules\n"


@pytest.mark.parametrize(("node", "match"), [
    (neuron.LIFNode(surrogate_function=surrogate.PiecewiseQuadratic(), step_mode="m"),
     r"cannot convert '1' \(LIFNode\): surrogate PiecewiseQuadratic"),
    (neuron.IFNode(step_mode="s"), r"cannot convert '1' \(IFNode\): step_mode='s'"),
])
def test_strict_refuses_a_node_it_cannot_convert(node, match):
    net = nn.Sequential(neuron.LIFNode(step_mode="m"), node)
    with pytest.raises(ValueError, match=match):
        convert_spikingjelly(net, strict=True)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got list"):
        convert_spikingjelly([neuron.LIFNode(step_mode="m")])
    with pytest.raises(ValueError, match="backend"):
        convert_spikingjelly(sj_net(), backend="gpu")
    with pytest.raises(TypeError, match="verbose must be a bool, got str"):
        convert_spikingjelly(sj_net(), verbose="yes")
    with pytest.raises(TypeError, match="strict must be a bool, got int"):
        convert_spikingjelly(sj_net(), strict=1)
    with pytest.raises(TypeError, match="pyfast_neuron must be a pyfast.nn.LIF or IF, got LIFNode"):
        SpikingJellyNeuron(neuron.LIFNode(step_mode="m"))
    with pytest.raises(ValueError, match="return_v=True"):
        SpikingJellyNeuron(LIF())


def test_a_node_at_two_paths_becomes_one_module_with_one_state(capsys):
    shared = neuron.LIFNode(step_mode="m")
    net = nn.Sequential(shared, layer.Linear(7, 7, step_mode="m"), shared)
    converted = convert_spikingjelly(copy.deepcopy(net), verbose=True)
    assert converted[0] is converted[2] and isinstance(converted[0], SpikingJellyNeuron)
    assert capsys.readouterr().out == "convert_spikingjelly: converted 1 module (1 LIFNode)\n"
    x = net_input(shape=(4, 3, 7)) * 3
    with torch.no_grad():
        assert torch.equal(converted(x), net(x))
        assert torch.equal(converted(x), net(x))  # both paths carried one membrane into the second call


def test_a_changed_reset_value_is_kept():
    node = neuron.LIFNode(step_mode="m")
    node.set_reset_value("v", 0.75)
    functional.reset_net(node)  # v = 0.75: the next call starts there, and so does every call after a reset
    converted = convert_spikingjelly(copy.deepcopy(node))
    x = net_input(shape=(4, 64))
    with torch.no_grad():
        assert not torch.equal(node(x), neuron.LIFNode(step_mode="m")(x))  # the start matters on this input
        functional.reset_net(node)
        for _ in range(2):
            assert torch.equal(converted(x), node(x))
            functional.reset_net(node)
            functional.reset_net(converted)


def test_bench_lif_sj_model_quick_cpu(run_bench_quick):
    out, rows = run_bench_quick("lif", "--sj-model", "--threads", "1", timeout=300)
    assert "convert_spikingjelly: converted 4 modules (2 LIFNode, 1 ParametricLIFNode, 1 IFNode)" in out
    assert "SpikingJelly conv SNN against its convert_spikingjelly copy" in out
    assert [(r["op"], r["provider"], r["mode"], r["shape"], r["dtype"]) for r in rows] == [
        ("lif-sj-model", provider, "fwd+bwd", "4x2x3x8x8", "fp32") for provider in ("spikingjelly", "pyfast")]
    sj_row, pyfast_row = rows
    assert float(sj_row["ratio_vs_reference"]) == 1.0
    assert float(pyfast_row["ratio_vs_reference"]) == pytest.approx(  # the CSV holds 6 significant digits
        float(sj_row["median_ms"]) / float(pyfast_row["median_ms"]), rel=1e-4)
    assert pyfast_row["note"].startswith("spikes!=ref 0.0000%; max|dW-dW_ref| ")
    assert all(float(r["median_ms"]) > 0 and float(r["peak_mem_MB"]) > 0 for r in rows)
