"""SpikingJelly -> pyfast: swap a SpikingJelly network's multi-step LIF / IF / PLIF nodes for pyfast's neurons.

:func:`convert_spikingjelly` replaces, in place, every ``LIFNode``, ``ParametricLIFNode`` and ``IFNode`` of
``spikingjelly.activation_based.neuron`` whose ``step_mode`` is ``"m"`` by a :class:`SpikingJellyNeuron`: a
``pyfast.nn.LIF`` / ``pyfast.nn.IF`` with the node's hyperparameters that keeps the membrane between calls as the
node did, so ``functional.reset_net`` / ``detach_net`` and training loops written for SpikingJelly work unchanged.

It lives here, in :mod:`pyfast.convert` with the other model converters, and not in :mod:`pyfast.nn`:
``pyfast.nn`` must not import ``pyfast.convert`` (which imports ``pyfast.nn``). It needs SpikingJelly 2.0
(``pip install -r requirements/peers.txt``); ``pyfast.convert`` imports this module on the first use of
``pyfast.convert.convert_spikingjelly``, so pyfast imports without SpikingJelly.
"""

from __future__ import annotations

import torch
from torch import nn

try:
    from spikingjelly.activation_based import base, neuron, surrogate
    from spikingjelly.activation_based.functional import invalidate_reset_cache
except ImportError as err:
    raise ImportError(f"pyfast.convert.spikingjelly needs SpikingJelly 2.0 ({err}): pip install -r "
                      "requirements/peers.txt") from err

from pyfast._checks import check_bool
from pyfast.convert.report import Report
from pyfast.nn._checks import check_backend
from pyfast.nn.lif import IF, LIF

__all__ = ["SpikingJellyNeuron", "convert_spikingjelly"]

NODE_TYPES = (neuron.LIFNode, neuron.ParametricLIFNode, neuron.IFNode)
SURROGATE_NAMES = {surrogate.Sigmoid: "sigmoid", surrogate.ATan: "atan"}  # SpikingJelly class -> pyfast name


class SpikingJellyNeuron(base.MemoryModule):
    """A pyfast neuron (``pyfast.nn.LIF`` or ``IF``, as ``self.neuron``) with a SpikingJelly node's membrane state.

    ``forward(x_seq)``: input current ``[T, *]`` -> spikes ``[T, *]`` (multi-step only: ``step_mode`` is ``"m"``
    and ``functional.set_step_mode(net, "s")`` is a ValueError). As in SpikingJelly, the membrane ``v`` (a memory of
    this :class:`~spikingjelly.activation_based.base.MemoryModule`) starts at its reset value (``v_reset``, 0 for
    soft reset); each call starts from the ``v`` the previous one left, with its autograd graph, so gradients flow
    back into earlier calls until ``functional.detach_net`` (``detach()``) or ``functional.reset_net``
    (``reset()``, back to the reset value). A call whose time step has another shape than the kept ``v`` (a smaller
    last batch) starts from ``v_reset`` (0 for soft reset), and a kept ``v`` of another dtype or device is moved to
    the input's, as SpikingJelly's nodes do.
    """

    def __init__(self, pyfast_neuron: LIF, v=None):
        """``pyfast_neuron`` must have ``return_v=True``. ``v``: the membrane to start from (a tensor of one time step,
        or a number), by default the neuron's reset value."""
        super().__init__()
        if not isinstance(pyfast_neuron, LIF):
            raise TypeError(f"SpikingJellyNeuron: pyfast_neuron must be a pyfast.nn.LIF or IF, got "
                            f"{type(pyfast_neuron).__name__}")
        if not pyfast_neuron.return_v:
            raise ValueError("SpikingJellyNeuron: pyfast_neuron must have return_v=True (the membrane is kept), got "
                             "return_v=False")
        self.neuron = pyfast_neuron
        # pyfast's neuron starts from this value when it gets no v0.
        self.rest = 0.0 if pyfast_neuron.v_reset is None else pyfast_neuron.v_reset
        self.register_memory("v", self.rest)
        if v is not None:
            self.v = v
        self.step_mode = "m"

    def supported_step_mode(self) -> tuple[str, ...]:
        return ("m",)

    def initial_membrane(self, x_seq: torch.Tensor) -> torch.Tensor | None:
        """The ``v0`` of a call on ``x_seq`` ``[T, *]``: None (the reset value, which pyfast's neuron starts from
        without reading a tensor) or a tensor of shape ``x_seq.shape[1:]`` in its dtype and device."""
        v = self.v
        if not isinstance(v, torch.Tensor):
            return None if v == self.rest else torch.full_like(x_seq[0], v)
        if v.shape != x_seq.shape[1:]:
            return None
        return v.to(dtype=x_seq.dtype, device=x_seq.device)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        spikes, self.v = self.neuron(x_seq, self.initial_membrane(x_seq))
        return spikes


def _surrogate_of(node) -> tuple[str, object] | str:
    """(pyfast surrogate name, alpha) of a node's surrogate function, or why pyfast has no equal of it. pyfast's
    neuron checks alpha itself."""
    fn = node.surrogate_function
    if type(fn) not in SURROGATE_NAMES:
        return f"surrogate {type(fn).__name__} (pyfast has Sigmoid and ATan)"
    if not fn.spiking:
        return f"surrogate {type(fn).__name__}(spiking=False) fires its primitive function, not spikes"
    return SURROGATE_NAMES[type(fn)], fn.alpha


def _pyfast_neuron(node, backend: str) -> SpikingJellyNeuron | str:
    """The module to put in place of a SpikingJelly node (an instance of one of ``NODE_TYPES``), or why it stays."""
    if type(node) not in NODE_TYPES:
        parent = next(t for t in NODE_TYPES if isinstance(node, t))
        return f"a subclass of {parent.__name__}, whose dynamics may differ"
    if node.step_mode != "m":
        return f"step_mode={node.step_mode!r} (pyfast's neurons are multi-step)"
    if node.store_v_seq:
        return "store_v_seq=True (pyfast's neurons return the final membrane only)"
    if getattr(node, "_neuron_precision", None) is not None:  # set by spikingjelly.activation_based.precision
        return "explicit neuron precision (spikingjelly.activation_based.precision)"
    found = _surrogate_of(node)
    if isinstance(found, str):
        return found
    name, alpha = found
    common = {"v_threshold": node.v_threshold, "v_reset": node.v_reset, "surrogate": name, "alpha": alpha,
              "detach_reset": node.detach_reset, "return_v": True, "backend": backend}
    try:
        if isinstance(node, neuron.IFNode):
            new = IF(**common)
        elif isinstance(node, neuron.ParametricLIFNode):
            # tau only initialises a w that is replaced by the node's own Parameter: k = sigmoid(w) as in PLIF.
            new = LIF(tau=2.0, decay_input=node.decay_input, learnable_tau=True, **common)
            new.w = node.w
        else:
            new = LIF(tau=node.tau, decay_input=node.decay_input, **common)
    except (ValueError, TypeError) as err:
        return str(err)
    wrapper = SpikingJellyNeuron(new, v=node.v)
    wrapper.set_reset_value("v", node.get_reset_value("v"))
    wrapper.train(node.training)
    return wrapper


def convert_spikingjelly(model: nn.Module, *, backend: str = "auto", strict: bool = False,
                         verbose: bool = False) -> nn.Module:
    """Replace SpikingJelly's multi-step ``LIFNode`` / ``ParametricLIFNode`` / ``IFNode`` in ``model`` (in place)
    by pyfast's neurons with the same hyperparameters and state semantics; returns ``model`` (the new module when
    ``model`` itself is such a node).

    Each node becomes a :class:`SpikingJellyNeuron` around ``pyfast.nn.LIF`` (LIFNode: ``tau``; ParametricLIFNode:
    ``learnable_tau=True`` with *the node's* ``w`` Parameter, k = sigmoid(w)) or ``pyfast.nn.IF`` (IFNode), with the
    node's ``v_threshold``, ``v_reset`` (None: soft reset), ``decay_input``, ``detach_reset``, and its surrogate
    (``surrogate.Sigmoid(alpha)`` -> ``"sigmoid"``, ``surrogate.ATan(alpha)`` -> ``"atan"``), training mode, current
    membrane ``v`` and reset value. PLIF's ``w`` keeps its object (optimizers built before still update it); in the
    state dict it moves from ``<node>.w`` to ``<node>.neuron.w``. Forward hooks of replaced nodes are not carried
    over; ``functional.reset_net``'s module cache of every module of ``model`` is cleared (it would still reset the
    old nodes).

    Left as they are (with the reason; ``strict=True`` raises a ValueError naming the first one instead):
    single-step nodes (``step_mode="s"``), ``store_v_seq=True`` (pyfast returns no membrane sequence), nodes with an
    explicit SpikingJelly neuron precision, other surrogates (or ``spiking=False``), hyperparameters pyfast's
    neurons refuse (e.g. ``v_threshold <= 0``), and subclasses of the three node types.

    Args:
        model: a ``torch.nn.Module`` (a SpikingJelly network, or one node).
        backend: pyfast backend of the new neurons (``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"``,
            ``"reference"``).
        strict: raise instead of leaving a node that cannot be converted.
        verbose: print a one-line summary: nodes converted by type, nodes left and why.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_spikingjelly: model must be a torch.nn.Module, got {type(model).__name__}")
    backend = check_backend("convert_spikingjelly", backend)
    check_bool("convert_spikingjelly", "strict", strict)
    check_bool("convert_spikingjelly", "verbose", verbose)
    report = Report("convert_spikingjelly")
    # By id: a node that appears at several paths is one state, so it gets one new module (and one line).
    outcome: dict[int, nn.Module | str] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not isinstance(module, NODE_TYPES):
            continue
        if id(module) not in outcome:
            new = outcome[id(module)] = _pyfast_neuron(module, backend)
            if isinstance(new, str):
                if strict:
                    raise ValueError(f"convert_spikingjelly: cannot convert {name or '<model>'!r} "
                                     f"({type(module).__name__}): {new}")
                report.leave(name or "<model>", f"{type(module).__name__}: {new}")
            else:
                report.swap(type(module).__name__)
        new = outcome[id(module)]
        if isinstance(new, str):
            continue
        if name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
        else:
            model = new  # model is a node itself
    for module in model.modules():
        invalidate_reset_cache(module)
    if verbose:
        print(report.line(), flush=True)
    return model

