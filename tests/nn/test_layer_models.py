"""SpectralGating and the SpectFormer, CoSwin and Astroformer models: the invariants their specs list."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pyfast
from pyfast.models.astroformer import MbConvBlock, RelAttention2d, TransformerBlock2d
from pyfast.models.coswin import CoSwinBlock, window_partition, window_reverse
from pyfast.models.spectformer import SpectralBlock
from pyfast.registry import MODELS

# --------------------------------------------------------------------------------------------------------------
# SpectralGating
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(8, 8), (5, 7), (3, 4)])
def test_spectral_gating_unit_weight_is_identity_and_constant_scales(h, w):
    sg = pyfast.nn.SpectralGating(6, h, w)
    x = torch.randn(2, h * w, 6)
    with torch.no_grad():
        sg.complex_weight.zero_()
        sg.complex_weight[..., 0] = 1.0
    torch.testing.assert_close(sg(x), x, rtol=1e-5, atol=1e-5)  # odd sizes: s=(h, w) keeps them exact
    with torch.no_grad():
        sg.complex_weight[..., 0] = 2.5
    torch.testing.assert_close(sg(x), 2.5 * x, rtol=1e-5, atol=1e-5)


def test_spectral_gating_upcasts_half_and_checks_shape():
    sg = pyfast.nn.SpectralGating(4, 4, 4)
    x = torch.randn(2, 16, 4)
    y = sg(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), sg(x.bfloat16().float()), rtol=1e-2, atol=1e-2)
    assert sg.complex_weight.shape == (4, 3, 4, 2) and abs(sg.complex_weight.std().item() - 0.02) < 0.01
    with pytest.raises(ValueError, match=r"x must have shape \[B, N, C\] with N=16, C=4 \(a token grid of 4x4\)"):
        sg(torch.randn(2, 15, 4))
    with pytest.raises(ValueError, match="h must be an int >= 1"):
        pyfast.nn.SpectralGating(4, 0, 4)


def test_spectral_gating_is_a_circular_convolution():
    # With ortho transforms both ways, y = F^-1(F x . W): a circular convolution of each channel with the kernel k
    # whose (unnormalised) rfft2 is W. Set W = rfft2(k) for a random real k and compare with the direct sum.
    torch.manual_seed(0)
    sg = pyfast.nn.SpectralGating(1, 4, 6)
    kernel = torch.randn(4, 6)
    with torch.no_grad():
        sg.complex_weight.copy_(torch.view_as_real(torch.fft.rfft2(kernel))[:, :, None, :])
    x = torch.randn(1, 24, 1)
    img = x.reshape(4, 6)
    direct = torch.zeros(4, 6)
    for i in range(4):
        for j in range(6):
            direct += img[i, j] * torch.roll(kernel, (i, j), dims=(0, 1))
    torch.testing.assert_close(sg(x).reshape(4, 6), direct, rtol=1e-4, atol=1e-5)


def test_spectformer_has_spectral_blocks_first():
    model = MODELS.get("spectformer").builder(10, dim=48, depth=5, alpha=3)
    kinds = [type(b).__name__ for b in model.blocks]
    assert kinds == ["SpectralBlock"] * 3 + ["Block"] * 2
    assert model.blocks[3].attn.num_heads == 6
    assert isinstance(model.blocks[0], SpectralBlock) and model.blocks[0].filter.h == 8
    with pytest.raises(ValueError, match="alpha must be in"):
        MODELS.get("spectformer").builder(10, depth=2, alpha=3)


# --------------------------------------------------------------------------------------------------------------
# CoSwin
# --------------------------------------------------------------------------------------------------------------


def test_coswin_gate_init_and_stage_layout():
    model = MODELS.get("coswin").builder(100)
    blocks = [m for m in model.modules() if isinstance(m, CoSwinBlock)]
    assert len(blocks) == 12
    assert torch.sigmoid(blocks[0].gate).item() == pytest.approx(0.6225, abs=1e-4)
    res = [b.res for b in blocks]
    assert res == [16] * 2 + [8] * 6 + [4] * 4
    assert [b.shift for b in blocks[:4]] == [0, 2, 0, 2]
    assert all(b.shift == 0 and b.window == 4 for b in blocks[8:])  # stage 3: resolution = window
    assert blocks[0].attn.relative_position_bias_table.shape == (49, 3)
    assert blocks[0].conv[0].out_channels == int(1.1 * 96)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


class _PlainSwin(nn.Module):
    """The same block without the conv branch: x + attn(LN1 x); x + MLP(LN2 x)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        x = x + self.block.window_attention(x)
        return x + self.block.mlp(self.block.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_coswin_block_with_zero_conv_is_a_swin_block(shift):
    torch.manual_seed(0)
    block = CoSwinBlock(24, 8, 3, window=4, shift=shift).eval()
    with torch.no_grad():
        for p in block.conv.parameters():
            p.zero_()
    x = torch.randn(2, 64, 24)
    torch.testing.assert_close(block(x), _PlainSwin(block)(x))


def test_coswin_shifted_window_mask_blocks_wrapped_pairs():
    block = CoSwinBlock(8, 8, 2, window=4, shift=2)
    mask = block.attn_mask
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    x = torch.randn(2, 8, 8, 5)
    torch.testing.assert_close(window_reverse(window_partition(x, 4), 4, 8, 8), x)


# --------------------------------------------------------------------------------------------------------------
# Astroformer
# --------------------------------------------------------------------------------------------------------------


def test_astroformer_block_types_bias_table_and_output():
    model = MODELS.get("astroformer").builder(100)
    kinds = [{type(b).__name__ for b in stage} for stage in model.stages]
    assert kinds == [{"MbConvBlock"}, {"MbConvBlock"}, {"MbConvBlock"}, {"TransformerBlock2d"}]
    assert [len(s) for s in model.stages] == [2, 3, 5, 2]
    attn = model.stages[3][0].attn
    assert isinstance(attn, RelAttention2d) and attn.size == (2, 2)  # stem stride 1 at 32 px: stages 16/8/4/2
    assert attn.relative_position_bias_table.shape == ((2 * 2 - 1) * (2 * 2 - 1), 768 // 32)
    assert isinstance(model.stages[0][0], MbConvBlock) and model.stages[0][0].conv1.out_channels == 4 * 96
    assert isinstance(model.stages[3][1], TransformerBlock2d)
    small = MODELS.get("astroformer").builder(100, embed_dims=[16, 32, 64, 64], depths=[1, 1, 1, 1], stem_width=8,
                                              head_hidden=16)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    official = MODELS.get("astroformer").builder(10, embed_dims=[16, 32, 64, 64], depths=[1, 1, 1, 1], stem_width=8,
                                                 head_hidden=16, stem_stride=2)
    assert official.stages[3][0].attn.size == (1, 1)
    with pytest.raises(ValueError, match="variant must be one of"):
        MODELS.get("astroformer").builder(10, variant=9)


def test_rel_attention_bias_index_is_relative():
    attn = RelAttention2d(32, 32, (3, 4))
    idx = attn.relative_position_index
    assert idx.shape == (12, 12) and idx.max().item() == (2 * 3 - 1) * (2 * 4 - 1) - 1
    # The same displacement maps to the same table row: (0,0)->(1,1) and (1,2)->(2,3).
    assert idx[0, 5].item() == idx[6, 11].item()
    assert math.isclose(attn.scale, 32**-0.5)


# --------------------------------------------------------------------------------------------------------------
# One short training step through the harness (pyfast train) per model
# --------------------------------------------------------------------------------------------------------------

HARNESS_SMALL = {
    "spectformer": {"dim": 48, "depth": 2, "alpha": 1},
    "coswin": {"embed_dim": 24, "depths": [1, 1, 1]},
    "astroformer": {"embed_dims": [16, 32, 32, 32], "depths": [1, 1, 1, 1], "stem_width": 8, "head_hidden": 16},
}


@pytest.mark.parametrize("name", sorted(HARNESS_SMALL))
def test_one_training_step_through_the_harness(tmp_path, name):
    from pyfast.harness import TrainConfig, load_checkpoint, train

    cfg = TrainConfig(model=name, model_args=HARNESS_SMALL[name], batch_size=8, epochs=1, max_steps_per_epoch=1,
                      progress=False, out=str(tmp_path))
    history = train(cfg, log=lambda line: None)
    assert history and math.isfinite(history[-1]["train_loss"])
    state = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
