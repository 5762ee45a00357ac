"""pyfast.convert.mesa.convert (pyfast.mesa.convert): which layers it swaps, and what it keeps (parameters, outputs, state_dict keys)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pyfast.convert.mesa
from pyfast.models.vit import Block
from pyfast.nn import mesa as mnn


def _tiny_vit(dim=24, heads=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, dim, 4, 4), nn.Flatten(2), TransposeTokens(), Block(dim, heads),
                         Block(dim, heads), nn.LayerNorm(dim))


class TransposeTokens(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


def test_convert_swaps_every_kind_and_keeps_the_function():
    model = _tiny_vit()
    ref = copy.deepcopy(model)
    params = {n: p for n, p in model.named_parameters()}
    out = pyfast.convert.mesa.convert(model)
    assert out is model
    types = {type(m) for m in model.modules()}
    assert {mnn.Linear, mnn.Conv2d, mnn.GELU, mnn.LayerNorm, mnn.Softmax, mnn.MatMul, mnn.Attention} <= types
    assert nn.Linear not in types and nn.GELU not in types
    # Same parameters (the very tensors, under the same names) and the same forward.
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    # Head-wise grouping: 3 heads everywhere (3 also divides the 3 input channels of the patch embedding).
    assert model[3].attn.matmul_qk.quant_a.groups == 3 and model[3].mlp.fc1.quant.groups == 3
    # Gradients close to the unquantized model's (first batch: the running estimates are this batch's range).
    # (a random projection of the output: squaring a LayerNorm output would give a zero true gradient)
    xg, proj = torch.randn(16, 3, 8, 8), torch.randn(16, 4, 24)
    (model(xg) * proj).sum().backward()
    (ref(xg) * proj).sum().backward()
    for (n, p), pr in zip(model.named_parameters(), ref.parameters()):
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), pr.grad.flatten(), dim=0)
        assert cos > 0.99, (n, cos)
    # (after the gradients: a first small batch would set running ranges that the next batch's outliers exceed)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), ref(x))
    # A second convert has nothing left to do; the state_dict of the original loads (estimates start fresh).
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pyfast.convert.mesa.convert(model)
    assert model.state_dict().keys() == before.keys()
    model.load_state_dict(ref.state_dict(), strict=True)


def test_new_estimates_live_on_the_model_device():
    # Parameterless layers (GELU, Softmax) take the device of the module around them: a model on another device
    # than the CPU (here "meta", which runs nowhere but keeps devices) must not get CPU estimates beside it.
    model = pyfast.convert.mesa.convert(_tiny_vit().to("meta"))
    devices = {t.device.type for t in (*model.parameters(), *model.buffers())}
    assert devices == {"meta"}
    assert model[3].mlp.act.quant.clip_val.device.type == "meta"


def test_policy_selects_kinds():
    model = pyfast.convert.mesa.convert(_tiny_vit(), policy=["linear"])
    types = {type(m) for m in model.modules()}
    assert mnn.Linear in types and nn.LayerNorm in types and nn.GELU in types and mnn.Attention not in types
    model = pyfast.convert.mesa.convert(_tiny_vit(), policy={"softmax": True, "matmul": False})
    attn = model[3].attn
    assert isinstance(attn, mnn.Attention) and attn.matmul_qk is None and isinstance(attn.softmax, mnn.Softmax)
    assert type(attn.qkv) is nn.Linear
    with pytest.raises(ValueError, match="unknown layer kinds"):
        pyfast.convert.mesa.convert(_tiny_vit(), policy=["relu"])


def test_unquantizable_model_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.MultiheadAttention(4, 2))
    before = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert pyfast.convert.mesa.convert(model) is model
    assert [type(m) for m in model.modules()] == [type(m) for m in before.modules()]
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not hasattr(model, "mesa_layers_converted")


def test_training_steps_with_amp_and_state_round_trip():
    model = pyfast.convert.mesa.convert(_tiny_vit())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 8, 8)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    clone = pyfast.convert.mesa.convert(_tiny_vit())
    clone.load_state_dict(model.state_dict())  # exact resume: the estimates are in the state_dict
    assert torch.equal(clone[3].attn.softmax.quant.clip_val, model[3].attn.softmax.quant.clip_val)
    assert bool(clone[3].attn.softmax.quant.initialized)
