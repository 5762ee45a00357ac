"""pyfast.nn gated modules: GCAB block (masks, binarisation, the routing invariant, clamping), HardAttentionGate and
the two-pass GradientRouting step (both gradient behaviours)."""

import pytest
import torch
from torch import nn

from pyfast.nn import GatedClassAttentionBlock, GradientRouting, HardAttentionGate, anneal_s


def _block(**kw):
    torch.manual_seed(0)
    return GatedClassAttentionBlock(16, 4, num_tasks=3, mlp_ratio=2, **kw).double()


def test_anneal_schedule():
    assert anneal_s(0, 10) == pytest.approx(1 / 800)
    assert anneal_s(10, 10) == pytest.approx(800)
    assert anneal_s(5, 10, s_max=4) == pytest.approx(0.25 + 3.75 / 2)
    with pytest.raises(ValueError, match="batch"):
        anneal_s(11, 10)


def test_old_task_masks_are_binary():
    blk = _block()
    m0, _ = blk.masks(0, s=0.01)
    assert ((m0 > 0) & (m0 < 1)).all()  # the current task: soft
    blk.consolidate(0)
    m0, m2 = blk.masks(0, s=0.01)
    assert set(m0.unique().tolist()) <= {0.0, 1.0} and set(m2.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(blk.m_pre0, (blk.e0[0] > 0).double())


def test_bad_task_and_widths():
    blk = _block()
    x, t = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 1, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="task must be"):
        blk(x, t, 3)
    with pytest.raises(ValueError, match="task_token"):
        blk(x, t[:, :, :8], 0)


def test_routing_invariant_task2_step_leaves_protected_weights_bit_for_bit():
    """After task 1 (index 0) is learned and its mask binarised, a task-2 step leaves every weight entry whose m_pre
    outer product is 1 bit-for-bit unchanged (and moves others)."""
    blk = _block()
    x, tok = torch.randn(4, 6, 16, dtype=torch.float64), torch.randn(4, 1, 16, dtype=torch.float64)
    opt = torch.optim.SGD(blk.parameters(), lr=0.5)
    for _ in range(3):  # task 0
        opt.zero_grad()
        blk(x, tok, 0, s=400.0).square().sum().backward()
        opt.step()
        blk.clamp_embeddings()
    blk.consolidate(0)
    assert 0 < blk.m_pre0.sum() < 16
    before = {id(p): p.detach().clone() for p, _, _ in blk.gated_parameters()}
    opt = torch.optim.SGD(blk.parameters(), lr=0.5)  # no momentum / weight decay, as the invariant requires
    opt.zero_grad()
    (blk(x, tok, 1, s=400.0).square().sum() + blk.sparsity_loss(1, s=400.0)).backward()
    blk.route_gradients(s=400.0)
    opt.step()
    blk.clamp_embeddings()
    moved = 0
    for p, mo, mi in blk.gated_parameters():
        protected = (torch.outer(mo, mi) if mi is not None else mo) == 1
        assert torch.equal(p.detach()[protected], before[id(p)][protected])
        moved += int((p.detach()[~protected] != before[id(p)][~protected]).sum())
    assert moved > 0
    assert blk.e0.abs().max() <= 6 and blk.e2.abs().max() <= 6


def test_hard_attention_gate_shapes_and_init():
    torch.manual_seed(0)
    g = HardAttentionGate(8, channel_dim=1)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(g(x), x * torch.sigmoid(g.gate).reshape(1, 8, 1, 1))
    with pytest.raises(ValueError, match="channels"):
        g(torch.randn(2, 7, 3, 3))


@pytest.mark.parametrize("accumulate", [True, False])
def test_gradient_routing_step(accumulate):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), HardAttentionGate(6), nn.Linear(6, 3))
    gates = [model[1].gate]
    main = [p for n, p in model.named_parameters() if not n.startswith("1.")]
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    lr = 0.1
    ref = [p.detach().clone() for p in model.parameters()]
    gr = GradientRouting(model, torch.optim.SGD(gates, lr=lr), torch.optim.SGD(main, lr=lr), accumulate=accumulate)
    gr.step(nn.functional.cross_entropy, x, y)
    # Recompute by hand: pass 1 gradients at the old weights, gate step, pass 2 gradients at the new gates.
    m = nn.Sequential(nn.Linear(4, 6), HardAttentionGate(6), nn.Linear(6, 3))
    with torch.no_grad():
        for p, r in zip(m.parameters(), ref):
            p.copy_(r)
    g1 = torch.autograd.grad(nn.functional.cross_entropy(m(x), y), list(m.parameters()))
    with torch.no_grad():
        m[1].gate -= lr * g1[2]
    g2 = torch.autograd.grad(nn.functional.cross_entropy(m(x), y), list(m.parameters()))
    for i, p in enumerate(model.parameters()):
        if i == 2:
            want = ref[i] - lr * g1[i]
        else:
            want = ref[i] - lr * (g2[i] + (g1[i] if accumulate else 0))
        torch.testing.assert_close(p.detach(), want)
