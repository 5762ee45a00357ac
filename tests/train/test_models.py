"""Models of the training harness: shapes, gradients, options and the BN folding."""

import pytest
import torch
from torch import nn

import pyfast
from pyfast.models import ConvSNN, SpikingVGG16, fuse_bn
from pyfast.registry import ATTENTIONS, MODELS, RegistryError

SMALL = {  # options that keep every registered model to a fraction of a second on the CPU
    "gcab-vit": {"dim": 32, "depth": 2, "num_heads": 4, "num_tasks": 7},
    "resnet18": {"width": 0.125},
    "vgg16": {"width": 0.125},
    "vgg16-snn": {"width": 0.125, "T": 2},
    "vit-tiny": {"depth": 2},
    "vit-small": {"depth": 1},
    "snn-small": {"T": 2},
    "spectformer": {"dim": 48, "depth": 2, "alpha": 1},
    "coswin": {"embed_dim": 24, "depths": [1, 2, 1]},
    "astroformer": {"embed_dims": [16, 32, 64, 64], "depths": [1, 1, 1, 1], "stem_width": 16, "head_hidden": 32},
}


def test_every_registered_model_is_covered_here():
    assert set(MODELS.names()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_maps_a_32x32_batch_to_logits_and_trains(name):
    torch.manual_seed(0)
    model = MODELS.get(name).builder(7, in_channels=3, image_size=32, **SMALL[name])
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    first = next(n for n, _ in model.named_parameters())
    assert first in with_grad, f"no gradient reached the first layer {first}"


def test_vit_attention_is_swappable_by_name():
    with pytest.raises(RegistryError, match="unknown attention 'linear'.*softmax"):
        MODELS.get("vit-tiny").builder(10, depth=1, attention="linear")
    model = MODELS.get("vit-tiny").builder(10, depth=1)
    attn = model.blocks[0].attn
    assert isinstance(attn, ATTENTIONS.get("softmax").builder)
    assert attn.qkv.out_features == 3 * 192 and attn.num_heads == 3 and attn.scale == 64 ** -0.5
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        model(torch.randn(2, 3, 16, 16))
    mesa = MODELS.get("vit-tiny").builder(10, depth=1, attention="mesa")
    assert type(mesa.blocks[0].attn).__module__ == "pyfast.nn.mesa" and mesa.blocks[0].attn.num_heads == 3
    mesa(torch.randn(2, 3, 32, 32)).sum().backward()
    assert mesa.blocks[0].attn.qkv.weight.grad is not None


def test_vit_attention_matches_scaled_dot_product_attention():
    torch.manual_seed(0)
    attn = ATTENTIONS.get("softmax").builder(24, 3).eval()
    x = torch.randn(2, 5, 24)
    q, k, v = attn.qkv(x).view(2, 5, 3, 3, 8).permute(2, 0, 3, 1, 4)
    expected = attn.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(attn(x), expected)


def test_fuse_bn_equals_the_unfused_model_in_eval_mode():
    torch.manual_seed(0)
    model = MODELS.get("vgg16").builder(10, width=0.125)
    model.train()
    for _ in range(3):  # give the BatchNorms non-trivial running statistics
        model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    fuse_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)


def test_spiking_vgg_uses_iir_neurons_and_follows_T():
    torch.manual_seed(0)
    model = SpikingVGG16(10, T=3, width=0.125)
    neurons = [m for m in model.modules() if isinstance(m, pyfast.nn.LIF)]
    assert len(neurons) == 15  # 13 conv layers + 2 hidden linear layers
    n = neurons[0]
    assert n.learnable_leak and n.leak.item() == 1.0 and n.v_threshold.item() == pytest.approx(0.4)
    assert n.surrogate == "triangle" and n.v_reset is None and not n.decay_input
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert neurons[3].leak.grad is not None and neurons[3].v_threshold.grad is not None
    model.T = 1
    assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="T must be"):
        SpikingVGG16(10, T=0)


def test_conv_snn_checks_its_input_shape():
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        ConvSNN(T=2)(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvSNN(image_size=10)


def test_lif_learnable_leak_is_the_iir_parametrisation():
    x = torch.randn(4, 2, 6)
    layer = pyfast.nn.LIF(tau=4.0, v_reset=None, decay_input=False, learnable_leak=True, param_shape=(6,))
    assert torch.allclose(layer.leak, torch.full((6,), 0.75))
    expected = pyfast.ops.lif(x, tau=4.0, v_reset=None, decay_input=False)
    assert torch.equal(layer(x), expected)
    layer(x).sum().backward()
    assert layer.leak.grad is not None and layer.leak.grad.shape == (6,)
    with pytest.raises(ValueError, match="choose one"):
        pyfast.nn.LIF(tau=2.0, learnable_tau=True, learnable_leak=True)
