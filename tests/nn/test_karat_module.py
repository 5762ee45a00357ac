"""pyfast.nn.FourierKArAtAttention and the KArAt ViT (pyfast.models.vit with attention="karat")."""

from __future__ import annotations

import pytest
import torch

from pyfast.models import vit_small, vit_tiny
from pyfast.models.vit import Attention
from pyfast.nn import FourierKArAtAttention, KArAtCoefficients
from pyfast.reference.karat import karat_attention_ref
from pyfast.registry import ATTENTIONS


def test_parameter_count_is_the_papers():
    # Table 1 / 13: ViT-Tiny + G3B has 0.76M operator parameters (224^2, patch 16: N = 197 tokens, 3 heads, 12 blocks).
    per_block = sum(p.numel() for p in KArAtCoefficients(3, 197, G=3, r=12).parameters())
    assert per_block == 3 * (2 * 4 * 12 * 197 + 12 * 197)
    assert round(12 * per_block / 1e6, 3) == 0.766
    without_m0 = sum(p.numel() for p in KArAtCoefficients(3, 197, G=3, r=12, constant_term=False).parameters())
    assert round(12 * without_m0 / 1e6, 2) == 0.6  # the count the paper's figures rule out


def test_module_matches_reference_and_is_a_drop_in():
    torch.manual_seed(0)
    soft = Attention(48, 4)
    attn = FourierKArAtAttention(48, 4, n_tokens=10, G=2, r=5)
    assert set(soft.state_dict()) <= set(attn.state_dict())  # qkv and proj named as in timm
    x = torch.randn(3, 10, 48, requires_grad=True)
    out = attn(x)
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, 4, C // 4).permute(2, 0, 3, 1, 4)
    c = attn.coef
    ref = karat_attention_ref(q, k, v, c.a, c.b, c.W, attn.scale).transpose(1, 2).reshape(B, N, C)
    torch.testing.assert_close(out, attn.proj(ref), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in attn.parameters())


def test_base_activation_matches_reference():
    torch.manual_seed(0)
    attn = FourierKArAtAttention(16, 2, n_tokens=6, G=1, r=3, base_activation="silu")
    x = torch.randn(2, 6, 16)
    q, k, v = attn.qkv(x).reshape(2, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
    c = attn.coef
    ref = karat_attention_ref(q, k, v, c.a, c.b, c.W, attn.scale, base_activation="silu", w_base=c.w_base)
    torch.testing.assert_close(attn(x), attn.proj(ref.transpose(1, 2).reshape(2, 6, 16)), rtol=1e-4, atol=1e-5)


def test_vit_with_karat_blockwise_and_universal():
    assert "karat" in ATTENTIONS.names()
    blockwise = vit_tiny(10, depth=3, attention="karat", attention_args={"r": 4})
    universal = vit_tiny(10, depth=3, attention="karat", attention_args={"r": 4, "mode": "universal"})
    # 32x32 input, patch 4: 64 patches + the class token.
    assert blockwise.blocks[0].attn.coef.n_tokens == 65
    coefs = {id(b.attn.coef) for b in universal.blocks}
    assert len(coefs) == 1 and len({id(b.attn.coef) for b in blockwise.blocks}) == 3
    n_op = lambda m: sum(p.numel() for n, p in m.named_parameters() if ".coef." in n)
    assert n_op(blockwise) == 3 * n_op(universal) == 3 * 3 * (2 * 4 * 4 * 65 + 4 * 65)
    x = torch.randn(2, 3, 32, 32)
    universal(x).sum().backward()
    shared = universal.blocks[0].attn.coef.a
    assert shared.grad is not None and shared is universal.blocks[2].attn.coef.a
    # a universal model's state dict round-trips (the shared tensors appear under every block's name)
    copy = vit_tiny(10, depth=3, attention="karat", attention_args={"r": 4, "mode": "universal"})
    copy.load_state_dict(universal.state_dict())
    torch.testing.assert_close(copy(x), universal(x))


def test_vit_small_karat_builds():
    m = vit_small(10, depth=1, attention="karat", attention_args={"G": 1})
    assert m.blocks[0].attn.coef.a.shape == (6, 12, 65, 2)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("kw, match", [
    ({"G": 0}, "G must be an int >= 1"),
    ({"r": 0}, "r must be an int >= 1"),
    ({"mode": "shared"}, "mode must be one of"),
    ({"n_tokens": None}, "n_tokens"),
    ({"attn_drop": 0.1}, "attn_drop must be 0"),
    ({"base_activation": "relu"}, "base_activation"),
])
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        FourierKArAtAttention(16, 2, **{"n_tokens": 5, **kw})


def test_sequence_length_must_match_the_coefficients():
    attn = FourierKArAtAttention(16, 2, n_tokens=5)
    with pytest.raises(ValueError, match="sequence length N = 6 does not match"):
        attn(torch.randn(1, 6, 16))
