"""Gated-attention modules: GCAB's gated class-attention block with HAT masks, hard-attention gates (HAG/FSG) and
the two-pass gradient-routing step.

GCAB (Cotogni et al., arXiv 2211.12292): per task t the block holds embeddings ``e0[t] in R^C`` and ``e2[t] in
R^hidden``; ``m = sigmoid(s e)``, with s annealed per batch from 1/s_max to s_max (:func:`anneal_s`) and s = s_max
at inference; masks of old tasks (t < ``current_task``) are hard-binarised (``m > 0.5``). After task t, ``m_pre =
max(m_pre, binarised m_t)`` (:meth:`GatedClassAttentionBlock.consolidate`), and every later step routes the
gradients (:meth:`GatedClassAttentionBlock.route_gradients`: weights both of whose gate ends are open for an old task
stop moving, the embedding gradient is compensated for the 1/s damping), then clamps the embeddings to
``[-thres_emb, thres_emb]`` (:meth:`clamp_embeddings`).

HAG (Roffo et al., arXiv 2407.04400): ``x <- x + branch(x) . sigmoid(g)``, one learnable g per channel; the gates are
trained by their own optimiser in a first forward/backward pass (:class:`GradientRouting`).
"""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_bool, check_int, check_number
from pyfast.nn._checks import check_backend, check_heads
from pyfast.ops.gated import gated_class_attention, gated_route_

__all__ = ["GatedClassAttention", "GatedClassAttentionBlock", "GradientRouting", "HardAttentionGate", "anneal_s"]


MAX_CHANNEL_DIM = 4  # HardAttentionGate: inputs up to 5-D, [B, C, D, H, W]


def anneal_s(batch: int, batches: int, s_max: float = 800.0) -> float:
    """GCAB's per-batch gate scale ``s = 1/s_max + (s_max - 1/s_max) b / B`` for batch b of B in an epoch."""
    check_number("anneal_s", "s_max", s_max, low=0.0, low_open=True)
    if batches < 1 or not 0 <= batch <= batches:
        raise ValueError(f"anneal_s: need 0 <= batch <= batches and batches >= 1, got batch={batch}, batches={batches}")
    return 1 / s_max + (s_max - 1 / s_max) * batch / batches


class GatedClassAttention(nn.Module):
    """Gated class-attention over ``[B, N+1, C]`` (the task token first) -> ``[B, 1, C]``, gate m ``[C]`` given.

    ``q``, ``k``, ``v``, ``proj``: Linear(C, C); ``k`` has no bias whatever ``qkv_bias`` says (a key bias is cancelled
    by the softmax, see :func:`pyfast.ops.gated_class_attention`).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        check_heads("GatedClassAttention", dim, num_heads)
        check_bool("GatedClassAttention", "qkv_bias", qkv_bias)
        self.num_heads, self.backend = num_heads, check_backend("GatedClassAttention", backend)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        y = gated_class_attention(x, gate, self.q.weight, self.q.bias, self.k.weight, self.v.weight, self.v.bias,
                                  self.proj.weight, self.proj.bias, self.num_heads, backend=self.backend)
        return y.unsqueeze(1)


class GatedClassAttentionBlock(nn.Module):
    """GCAB: the task token attends to the patch tokens through gated class-attention and a gated MLP.

    ``forward(tokens [B, N, C], task_token [B, 1, C], task, s=None) -> [B, 1, C]``::

        u = cat(task_token, tokens);  t = task_token + attn(norm1(u), m0)
        t = t + fc2(GELU(fc1(norm2(t) . m0)) . m2) . m0          (m0 = mask of e0[task], m2 of e2[task])

    Args:
        dim, num_heads, mlp_ratio: sizes (GCAB CIFAR: 384, 12, 4).
        num_tasks: embeddings are allocated for this many tasks; ``task`` out of range is an error.
        s_max: the gate scale at the end of annealing and at inference (800).
        thres_emb: embeddings are clamped to [-thres_emb, thres_emb] after each step (6).
    """

    def __init__(self, dim: int, num_heads: int, num_tasks: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 s_max: float = 800.0, thres_emb: float = 6.0, backend: str = "auto"):
        super().__init__()
        owner = "GatedClassAttentionBlock"
        check_heads(owner, dim, num_heads)
        check_int(owner, "num_tasks", num_tasks)
        hidden = int(dim * check_number(owner, "mlp_ratio", mlp_ratio, low=0.0, low_open=True))
        if hidden < 1:
            raise ValueError(f"{owner}: mlp_ratio must give an MLP of at least 1 unit, got int(dim * mlp_ratio) = "
                             f"int({dim} * {mlp_ratio}) = {hidden}")
        s_max = check_number(owner, "s_max", s_max, low=0.0, low_open=True)
        thres_emb = check_number(owner, "thres_emb", thres_emb, low=0.0, low_open=True)
        self.num_tasks, self.s_max, self.thres_emb, self.backend = num_tasks, s_max, thres_emb, backend
        self.register_buffer("task_index", torch.zeros((), dtype=torch.int64))  # current_task, kept in checkpoints
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GatedClassAttention(dim, num_heads, qkv_bias, backend)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.e0 = nn.Parameter(torch.randn(num_tasks, dim))
        self.e2 = nn.Parameter(torch.randn(num_tasks, hidden))
        self.register_buffer("m_pre0", torch.zeros(dim))
        self.register_buffer("m_pre2", torch.zeros(hidden))

    @property
    def current_task(self) -> int:
        """Tasks below this index are old: their masks are binarised and m_pre protects their weights."""
        return int(self.task_index)

    def _check_task(self, task: int) -> None:
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise ValueError(f"GatedClassAttentionBlock: task must be an integer in [0, {self.num_tasks}), got "
                             f"{task!r}")

    def masks(self, task: int, s: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m0 [C], m2 [hidden])`` of ``task``: sigmoid(s e), hard-binarised for old tasks (task < current)."""
        self._check_task(task)
        s = self.s_max if s is None else s
        m0, m2 = torch.sigmoid(s * self.e0[task]), torch.sigmoid(s * self.e2[task])
        if task < self.current_task:
            m0, m2 = (m0 > 0.5).to(m0.dtype), (m2 > 0.5).to(m2.dtype)
        return m0, m2

    def forward(self, tokens: torch.Tensor, task_token: torch.Tensor, task: int, s: float | None = None):
        if tokens.dim() != 3 or task_token.shape != (tokens.shape[0], 1, tokens.shape[2]):
            raise ValueError(f"GatedClassAttentionBlock: tokens must be [B, N, C] and task_token [B, 1, C], got "
                             f"{tuple(tokens.shape)} and {tuple(task_token.shape)}")
        m0, m2 = self.masks(task, s)
        u = torch.cat([task_token, tokens], dim=1)
        t = task_token + self.attn(self.norm1(u), m0)
        return t + self.fc2(self.act(self.fc1(self.norm2(t) * m0)) * m2) * m0

    # -- HAT bookkeeping -------------------------------------------------------------------------------------------

    def gated_parameters(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """``(parameter, m_pre_out, m_pre_in)`` of every gated weight and bias (m_pre_in None for a bias): the pairs
        m0 x m0 for q/k/v/proj, m2 x m0 for fc1, m0 x m2 for fc2."""
        p0, p2 = self.m_pre0, self.m_pre2
        out = []
        for lin, mo, mi in ((self.attn.q, p0, p0), (self.attn.k, p0, p0), (self.attn.v, p0, p0),
                            (self.attn.proj, p0, p0), (self.fc1, p2, p0), (self.fc2, p0, p2)):
            out.append((lin.weight, mo, mi))
            if lin.bias is not None:
                out.append((lin.bias, mo, None))
        return out

    @torch.no_grad()
    def consolidate(self, task: int) -> None:
        """After training ``task``: m_pre = max(m_pre, binarised masks of ``task`` at s_max); later tasks treat it as
        old (``current_task = task + 1``)."""
        self._check_task(task)
        self.m_pre0.copy_(torch.maximum(self.m_pre0, (torch.sigmoid(self.s_max * self.e0[task]) > 0.5).float()))
        self.m_pre2.copy_(torch.maximum(self.m_pre2, (torch.sigmoid(self.s_max * self.e2[task]) > 0.5).float()))
        self.task_index.fill_(max(self.current_task, task + 1))

    @torch.no_grad()
    def route_gradients(self, s: float) -> None:
        """Before the optimiser step of a task > 0: mask the gated parameters' gradients with 1 - m_pre_out m_pre_in
        and compensate the embedding gradients (one :func:`pyfast.ops.gated_route_` call)."""
        params = [(p, mo, mi) for p, mo, mi in self.gated_parameters() if p.grad is not None]
        embs = [e for e in (self.e0, self.e2) if e.grad is not None]
        gated_route_([p.grad for p, _, _ in params], [mo for _, mo, _ in params], [mi for _, _, mi in params],
                     [e.grad for e in embs], [e.detach() for e in embs], s=s, s_max=self.s_max,
                     backend=self.backend)

    @torch.no_grad()
    def clamp_embeddings(self) -> None:
        """e <- clamp(e, -thres_emb, thres_emb), after each optimiser step."""
        self.e0.clamp_(-self.thres_emb, self.thres_emb)
        self.e2.clamp_(-self.thres_emb, self.thres_emb)

    def sparsity_loss(self, task: int, s: float | None = None) -> torch.Tensor:
        """HAT's regulariser ``sum m (1 - m_pre) / sum (1 - m_pre)`` over both gates (weight it by 0.05)."""
        m0, m2 = self.masks(task, s)
        free0, free2 = 1 - self.m_pre0, 1 - self.m_pre2
        return ((m0 * free0).sum() + (m2 * free2).sum()) / (free0.sum() + free2.sum()).clamp_min(1)


class HardAttentionGate(nn.Module):
    """A learnable per-channel sigmoid gate: ``x * sigmoid(g)`` with g ``[channels]`` broadcast along ``channel_dim``
    (-1 for tokens ``[B, N, C]``, 1 for feature maps ``[B, C, H, W]``). g starts xavier-normal (gain for sigmoid,
    i.e. 1), as the HAG code initialises it."""

    def __init__(self, channels: int, channel_dim: int = -1):
        super().__init__()
        check_int("HardAttentionGate", "channels", channels)
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise TypeError(f"HardAttentionGate: channel_dim must be an int, got {type(channel_dim).__name__} "
                            f"{channel_dim!r}")
        if not 1 <= abs(channel_dim) <= MAX_CHANNEL_DIM:
            raise ValueError(f"HardAttentionGate: channel_dim must be in [-{MAX_CHANNEL_DIM}, -1] or "
                             f"[1, {MAX_CHANNEL_DIM}] (axis 0 is the batch; inputs have at most "
                             f"{MAX_CHANNEL_DIM + 1} dims), got {channel_dim}")
        self.channel_dim = channel_dim
        self.gate = nn.Parameter(torch.empty(1, channels))
        nn.init.xavier_normal_(self.gate, gain=nn.init.calculate_gain("sigmoid"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.gate.shape[1]
        axis = self.channel_dim if self.channel_dim > 0 else x.dim() + self.channel_dim
        if not 1 <= axis < x.dim() or x.shape[axis] != c:  # axis 0 is the batch
            raise ValueError(f"HardAttentionGate: x must have {c} channels on dim {self.channel_dim} (after the batch "
                             f"axis), got shape {tuple(x.shape)}")
        shape = [1] * x.dim()
        shape[self.channel_dim] = c
        return x * torch.sigmoid(self.gate).reshape(shape)


class GradientRouting:
    """HAG gradient routing: two forward/backward passes per batch.

    1. forward, loss, backward, step ``gate_optimizer`` (the gates only);
    2. forward again with the updated gates, loss, backward, step ``main_optimizer`` (everything else).

    The official code zeroes gradients once per iteration, so the main step sees the **sum** of both passes'
    gradients; ``accumulate=True`` (default) keeps that quirk, ``accumulate=False`` zeroes the main gradients
    between the passes (the main step sees pass 2 only).
    """

    def __init__(self, model: nn.Module, gate_optimizer: torch.optim.Optimizer,
                 main_optimizer: torch.optim.Optimizer, accumulate: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"GradientRouting: model must be an nn.Module, got {type(model).__name__}")
        for name, opt in (("gate_optimizer", gate_optimizer), ("main_optimizer", main_optimizer)):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"GradientRouting: {name} must be a torch.optim.Optimizer, got {type(opt).__name__}")
        check_bool("GradientRouting", "accumulate", accumulate)
        # A parameter in both optimisers would move in the gate pass as well: the two passes would not be separate.
        gate_params = {id(p) for group in gate_optimizer.param_groups for p in group["params"]}
        shared = sum(id(p) in gate_params for group in main_optimizer.param_groups for p in group["params"])
        if shared:
            raise ValueError(f"GradientRouting: gate_optimizer and main_optimizer must hold disjoint parameters (the "
                             f"gates, everything else), got {shared} parameter(s) in both")
        self.model, self.gate_optimizer, self.main_optimizer, self.accumulate = (model, gate_optimizer,
                                                                                 main_optimizer, accumulate)

    def step(self, loss_fn, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One routed iteration; ``loss_fn(logits, y)`` -> scalar. Returns (pass-2 loss, pass-2 logits)."""
        self.gate_optimizer.zero_grad(set_to_none=True)
        self.main_optimizer.zero_grad(set_to_none=True)
        loss_fn(self.model(x), y).backward()
        self.gate_optimizer.step()
        if not self.accumulate:
            self.main_optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        self.main_optimizer.step()
        return loss, logits
