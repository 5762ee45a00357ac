"""pyfast.nn.WeightedConv1d/2d/3d and pyfast.convert.wconv.convert / revert / den_parameters: drop-in behaviour, state dicts,
caching, conversion of conv models and a few training steps."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import pyfast
from pyfast.convert.wconv import convert, den_parameters, param_groups, revert, weighted_layers
from pyfast.nn.wconv import default_den
from pyfast.reference.wconv import wconv_ref


def _pair(plain_cls, weighted_cls, *args, **kwargs):
    torch.manual_seed(0)
    plain = plain_cls(*args, **kwargs)
    weighted = weighted_cls(*args, **kwargs)
    weighted.load_state_dict(plain.state_dict())
    return plain, weighted


@pytest.mark.parametrize(("plain_cls", "weighted_cls", "x_shape", "kw"), [
    (nn.Conv1d, pyfast.nn.WeightedConv1d, (2, 4, 11), {"kernel_size": 5, "padding": 2, "stride": 2}),
    (nn.Conv2d, pyfast.nn.WeightedConv2d, (2, 4, 9, 9), {"kernel_size": 3, "padding": "same", "groups": 2}),
    (nn.Conv2d, pyfast.nn.WeightedConv2d, (2, 4, 9, 9), {"kernel_size": (3, 5), "padding": 1, "bias": False,
                                                         "padding_mode": "reflect"}),
    (nn.Conv3d, pyfast.nn.WeightedConv3d, (1, 4, 5, 6, 5), {"kernel_size": 3, "padding": 1, "dilation": (1, 2, 1)}),
])
def test_module_is_a_drop_in_conv_with_the_density(plain_cls, weighted_cls, x_shape, kw):
    plain, weighted = _pair(plain_cls, weighted_cls, 4, 6, **kw)
    assert isinstance(weighted, plain_cls)
    assert set(weighted.state_dict()) == set(plain.state_dict()) | {"den"}
    assert not weighted.learnable_den and "den" in dict(weighted.named_buffers())
    x = torch.randn(x_shape)
    # den = ones gives back the plain conv exactly; the default den is the suggested value.
    ones = weighted_cls(4, 6, **kw, den=[[1.0] * ((k - 1) // 2) for k in weighted.kernel_size])
    ones.load_state_dict(plain.state_dict())
    torch.testing.assert_close(ones(x), plain(x))
    expected = default_den(weighted.kernel_size)
    per_axis = expected if isinstance(expected, list) else [expected] * len(weighted.kernel_size)
    got = [tuple(round(v, 6) for v in d.tolist()) for d in weighted.den_per_axis()]
    assert got == [tuple(d) for d in per_axis]
    y = weighted(x)
    # The reference on the plain conv's own forward (padding_mode included) with W * Phi.
    from pyfast.reference.wconv import wconv_weight_ref

    torch.testing.assert_close(y, plain._conv_forward(x, wconv_weight_ref(plain.weight, weighted.den), plain.bias))
    assert "den=" in repr(weighted)


def test_learnable_den_gets_gradients_and_its_own_group():
    layer = pyfast.nn.WeightedConv2d(3, 4, 5, padding=2, den=[0.2, 0.8], learnable_den=True)
    assert isinstance(layer.den, nn.Parameter) and layer.learnable_den
    x = torch.randn(2, 3, 8, 8)
    layer(x).square().sum().backward()
    assert layer.den.grad is not None and layer.den.grad.shape == (2,)
    ref_den = layer.den.detach().clone().requires_grad_()
    wconv_ref(x, layer.weight.detach(), ref_den, layer.bias.detach(), padding=2).square().sum().backward()
    torch.testing.assert_close(layer.den.grad, ref_den.grad, rtol=1e-4, atol=1e-3)
    model = nn.Sequential(layer, nn.ReLU(), nn.Conv2d(4, 2, 1))
    assert den_parameters(model) == [layer.den]
    groups = param_groups(model, lr=1e-2, weight_decay=1e-2)
    assert len(groups) == 2 and groups[1]["params"] == [layer.den] and groups[1]["lr"] == 1e-2
    assert len(groups[0]["params"]) == 4  # weight, bias of both convs, not den


def test_non_square_kernel_has_one_den_per_axis():
    layer = pyfast.nn.WeightedConv2d(2, 2, (3, 7), den=[[0.5], [0.25, 0.15, 0.55]], learnable_den=True)
    assert layer.den.shape == (4,)
    phi = layer.density()
    torch.testing.assert_close(phi[1], torch.tensor([0.25, 0.15, 0.55, 1.0, 0.55, 0.15, 0.25]))
    torch.testing.assert_close(phi[:, 3], torch.tensor([0.5, 1.0, 0.5]))
    # A square kernel can have separate dens too (anisotropic), or the default shared one.
    assert pyfast.nn.WeightedConv2d(2, 2, 3, den=[[0.5], [0.9]]).den.tolist() == pytest.approx([0.5, 0.9])
    assert pyfast.nn.WeightedConv2d(2, 2, 3).den.tolist() == pytest.approx([0.7])


def test_state_dicts_load_both_ways():
    plain, weighted = _pair(nn.Conv2d, pyfast.nn.WeightedConv2d, 3, 5, 3, padding=1)
    # plain -> weighted, strict: den is not reported missing and keeps its value.
    weighted.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(weighted.weight, plain.weight)
    assert weighted.den.tolist() == pytest.approx([0.7])
    # weighted -> plain needs strict=False (den is unexpected there).
    with pytest.raises(RuntimeError, match="den"):
        nn.Conv2d(3, 5, 3, padding=1).load_state_dict(weighted.state_dict())
    other = nn.Conv2d(3, 5, 3, padding=1)
    result = other.load_state_dict(weighted.state_dict(), strict=False)
    assert result.unexpected_keys == ["den"] and torch.equal(other.weight, weighted.weight)
    # weighted -> weighted round trip keeps den (a learnable one too), through torch.save.
    learn = pyfast.nn.WeightedConv2d(3, 5, 3, padding=1, den=[0.3], learnable_den=True)
    buf = io.BytesIO()
    torch.save(learn.state_dict(), buf)
    buf.seek(0)
    fresh = pyfast.nn.WeightedConv2d(3, 5, 3, padding=1, learnable_den=True)
    fresh.load_state_dict(torch.load(buf))
    assert fresh.den.tolist() == pytest.approx([0.3])
    # A bad den in a state dict is refused, naming den.
    sd = learn.state_dict()
    sd["den"] = torch.tensor([float("nan")])
    with pytest.raises(ValueError, match="den must be finite"):
        fresh.load_state_dict(sd)
    sd["den"] = torch.tensor([0.1, 0.2, 0.3])
    with pytest.raises(RuntimeError, match="size mismatch for den"):
        fresh.load_state_dict(sd)


def _ema_through_data(layer):
    layer.weight.data.mul_(0.5).add_(1.0)  # .data: no version bump on the parameter


@pytest.mark.parametrize("change", [
    _ema_through_data,
    lambda layer: setattr(layer.weight, "data", layer.weight.data * 3),
    lambda layer: layer.weight.mul_(2),
    lambda layer: layer.weight.copy_(torch.randn_like(layer.weight)),  # under no_grad, as the test applies each change
    lambda layer: layer.weight.data.copy_(torch.randn_like(layer.weight)),
    lambda layer: layer.load_state_dict({**layer.state_dict(), "weight": torch.randn_like(layer.weight)}),
    lambda layer: layer.den.fill_(0.1),
    lambda layer: layer.den.data.copy_(torch.tensor([0.3])),
    lambda layer: torch.optim.SGD(layer.parameters(), lr=1.0).step(),
])
def test_eval_output_follows_every_kind_of_weight_or_den_change(change):
    # The reviewer's reproducer: a cached W * Phi went stale after an EMA update written with .data (off by 1.3).
    layer = pyfast.nn.WeightedConv2d(2, 3, 3, padding=1, learnable_den=True).eval()
    x = torch.randn(1, 2, 5, 5)
    layer(x).sum().backward()  # gradients for the optimizer case
    with torch.no_grad():
        layer(x)
        layer(x)
        change(layer)
        torch.testing.assert_close(layer(x), wconv_ref(x, layer.weight, layer.den, layer.bias, padding=1))
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), wconv_ref(x, layer.weight, layer.den, layer.bias, padding=1))
    layer = layer.double()
    torch.testing.assert_close(layer(x.double()), wconv_ref(x.double(), layer.weight, layer.den, layer.bias,
                                                            padding=1))


def test_bad_constructor_arguments_name_the_argument():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        pyfast.nn.WeightedConv2d(2, 2, 4)
    with pytest.raises(ValueError, match=r"den must have sum\(\(K-1\)/2\) = 4 values .* or 2 .*got 3"):
        pyfast.nn.WeightedConv2d(2, 2, 5, den=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="den must be >= 0"):
        pyfast.nn.WeightedConv2d(2, 2, 3, den=[-0.5])
    assert pyfast.nn.WeightedConv2d(2, 2, 3, den=[-0.5], allow_negative_den=True).den.item() == -0.5
    with pytest.raises(ValueError, match="den must be finite"):
        pyfast.nn.WeightedConv1d(2, 2, 3, den=[float("nan")])
    with pytest.raises(ValueError, match="no suggested den for kernel size 9"):
        pyfast.nn.WeightedConv2d(2, 2, 9)
    with pytest.raises(TypeError, match="den must be a floating-point tensor"):
        pyfast.nn.WeightedConv2d(2, 2, 3, den=torch.tensor([1]))


class _TinyResNet(nn.Module):
    """A CIFAR-ResNet-shaped toy: stem 3x3, a basic block with a strided 1x1 shortcut, pooled head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.head(torch.relu(y + self.shortcut(x)).mean((2, 3)))


def test_convert_replaces_convs_keeps_parameters_and_trains():
    torch.manual_seed(0)
    model = _TinyResNet()
    weight_ids = {id(model.conv1.weight), id(model.stem[0].weight)}
    convert(model, learnable_den=True)
    names = [n for n, _ in weighted_layers(model)]
    assert names == ["stem.0", "conv1", "conv2"]  # the 1x1 shortcut is left alone (its density is 1)
    assert type(model.shortcut[0]) is nn.Conv2d
    assert {id(model.conv1.weight), id(model.stem[0].weight)} == weight_ids
    assert model.conv1.stride == (2, 2) and model.conv1.bias is None
    dens = den_parameters(model)
    assert len(dens) == 3
    opt = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=1e-2), lr=1e-2)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    before = [d.detach().clone() for d in dens]
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, d) for b, d in zip(before, dens))


def test_convert_den_options_and_revert_is_the_same_function():
    model = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.Conv1d(4, 4, 3), nn.Conv2d(4, 4, 2), nn.ConvTranspose2d(4, 4, 3))
    ref = copy.deepcopy(model)
    convert(model, den={5: [0.1, 0.5], 3: [0.9]})
    assert model[0].den.tolist() == pytest.approx([0.1, 0.5]) and model[2].den.tolist() == pytest.approx([0.9])
    assert type(model[4]) is nn.Conv2d and type(model[5]) is nn.ConvTranspose2d  # even kernel, transposed: kept
    x = torch.randn(1, 3, 7, 7)
    y = model[2](model[1](model[0](x)))
    folded = revert(copy.deepcopy(model))
    assert not weighted_layers(folded) and type(folded[0]) is nn.Conv2d
    torch.testing.assert_close(folded[2](folded[1](folded[0](x))), y)
    assert not torch.allclose(y, ref[2](ref[1](ref[0](x))))
    # A callable chooses per layer (False skips); errors name the layer.
    m2 = convert(copy.deepcopy(ref), den=lambda name, conv: False if name == "2" else None)
    assert [n for n, _ in weighted_layers(m2)] == ["0", "3"]
    with pytest.raises(ValueError, match=r"layer '0'.*den must have"):
        convert(copy.deepcopy(ref), den=[0.5])


def test_module_compiles_fullgraph():
    torch._dynamo.reset()
    layer = pyfast.nn.WeightedConv2d(2, 3, 3, padding=1, learnable_den=True)
    x = torch.randn(2, 2, 6, 6)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    g_den = layer.den.grad.clone()
    layer.den.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(g_den, layer.den.grad)
