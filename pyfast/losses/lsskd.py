"""LSSKD: layered self-supervised knowledge distillation (Dahri et al., arXiv 2506.07055), a teacher-free self-KD.

The network learns, besides its classes, the *self-supervised augmented distribution* (SAD, from HSAKD: Yang et al.,
IJCAI 2021): auxiliary heads after each backbone stage classify the joint label (class ``y``, transformation ``j``)
of ``x~_j = rotate(x, 90° j)``, ``j = 0..M-1``, over ``N * M`` joint classes. Knowledge then flows one-to-one between
the stages and, through a bank of last epoch's predictions (PS-KD: Kim et al., ICCV 2021), across epochs. All heads
are dropped at inference.

What follows which source. Section III of the LSSKD paper could not be read here (only its abstract and secondary
summaries: auxiliary classifiers after each stage, rotation SADs, cross-layer KL divergence, an L2 feature
alignment, heads removed at inference), so the loss below is a reconstruction, not the paper's equations:

- from HSAKD (its code): the joint label ``y * M + j``; rotations by 90° as the transformations, M = 4; auxiliary
  heads = feature module + global average pool + linear over the ``N * M`` joint classes; the rotated copies pass
  through the backbone in the same batch; each head trained by cross-entropy on the joint labels; temperature 3 with
  the ``tau^2`` factor on the KL terms;
- from PS-KD (its code): the final classifier's target is ``q = (1 - alpha_e) onehot(y) + alpha_e p^{e-1}`` with
  ``p^{e-1}`` the model's own softmax prediction for the same image in the previous epoch (one-hot at the first
  epoch), ``alpha_e = alpha_T e / E`` for the e-th of E epochs (1-based), ``alpha_T = 0.8``, trained by the soft-target
  cross-entropy; the predictions of every step are written back to the bank (all-gathered over DDP ranks);
- reconstructed here: which stage teaches which (the deeper auxiliary head teaches the next shallower one, per
  transformation; optionally the ensemble of the heads teaches the final classifier), the rotation-marginalisation
  of the joint distribution (``p(c | x) = sum_j p(c, j | x)``), the form of the feature alignment, the feature module
  of a head (one 3x3 stride-2 conv + BN + ReLU, much lighter than HSAKD's copies of the later stages), and the
  weights. The bank holds the final classifier's class distribution only (``[n_samples, N]``): a per-head
  joint-distribution bank would cost ``n_samples * L * M * N * M`` floats (1.3 GB for CIFAR-100), so the
  across-epoch transfer goes through the final classifier.
- off by default (``ens_weight = feat_weight = 0``): the ensemble -> final-classifier KL and the feature alignment.
  On the embedded digits (resnet18 at width 0.125, 6 epochs) the ensemble term, whose teacher mixes the weak
  shallow heads, left the final classifier under-confident (test cross-entropy 0.96 against 0.30 without it) and
  cost 1 to 2 points of test accuracy (95.8% with it, 96.9% and 97.8% without it in two runs of seed 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pyfast.losses._checks import (
    check_labels,
    check_logits,
    check_nonnegative,
    check_positive,
    check_probability_rows,
    reduce,
)
from pyfast.losses.kd import float_logits, kl_rows


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------------------
# The self-supervised augmented task: rotated copies, joint labels, marginals
# --------------------------------------------------------------------------------------------------------------


def sad_labels(y: torch.Tensor, j, M: int) -> torch.Tensor:
    """The joint (class, transformation) label ``y * M + j`` in ``[0, N * M)``.

    ``y``: int64 class labels (any shape); ``j``: the transformation index, an int or an int64 tensor broadcastable
    with ``y``, in ``[0, M)``. Joint logits are laid out class-major: the M transformations of class c are the
    columns ``c * M .. c * M + M - 1``.
    """
    M = _check_int("M", M, 1)
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
        raise ValueError(f"y must be an int64 tensor of class labels, got {getattr(y, 'dtype', type(y).__name__)}")
    j_t = torch.as_tensor(j, device=y.device)
    # The values are read back, except while torch.compile traces (as check_labels): lsskd_loss's y is checked there
    # already and its j is an arange.
    values_checked = not torch.compiler.is_compiling()
    if values_checked and y.numel() and int(y.min()) < 0:
        raise ValueError(f"y must hold class indices >= 0, got {int(y.min())}")
    if j_t.dtype != torch.int64 or (values_checked and j_t.numel() and (int(j_t.min()) < 0 or int(j_t.max()) >= M)):
        raise ValueError(f"j must be an integer (or int64 tensor) in [0, {M}), got {j!r}")
    return y * M + j_t


def rotated_copies(x: torch.Tensor, M: int = 4) -> torch.Tensor:
    """``x [B, C, H, W]`` (H = W) -> ``[M * B, C, H, W]``: the batch rotated by 0°, 90°, ..., 90° (M - 1),
    transformation-major (rows ``j * B .. j * B + B - 1`` are ``rotate(x, 90° j)``, counter-clockwise)."""
    M = _check_int("M", M, 1)
    if x.dim() != 4 or (M > 1 and x.shape[2] != x.shape[3]):
        raise ValueError(f"x must be a batch of square images [B, C, H, H] to be rotated, got {tuple(x.shape)}")
    return torch.cat([torch.rot90(x, j, dims=(2, 3)) for j in range(M)])


def marginal_classes(joint_probs: torch.Tensor, M: int) -> torch.Tensor:
    """Rotation-marginal class distribution ``p(c) = sum_j p(c, j)``: ``[..., N * M] -> [..., N]``."""
    return joint_probs.unflatten(-1, (joint_probs.shape[-1] // M, M)).sum(-1)


class SADHead(nn.Module):
    """An auxiliary classifier of the self-supervised augmented distribution.

    ``features [B, in_ch, H, W] -> joint logits [B, n_cls * n_trans]`` (column ``y * n_trans + j``, see
    :func:`sad_labels`). Feature module: one 3x3 conv (stride 2, ``in_ch -> out_ch``, default ``out_ch = in_ch``) +
    BatchNorm + ReLU, then global average pooling and a linear layer. ``forward(f, return_features=True)`` also
    returns the pooled features ``[B, out_ch]`` (for a feature alignment between heads of equal ``out_ch``).
    """

    def __init__(self, in_ch: int, n_cls: int, n_trans: int = 4, out_ch: int | None = None):
        super().__init__()
        _check_int("in_ch", in_ch, 1)
        _check_int("n_cls", n_cls, 2)
        self.n_cls, self.n_trans = n_cls, _check_int("n_trans", n_trans, 1)
        out_ch = in_ch if out_ch is None else _check_int("out_ch", out_ch, 1)
        self.features = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), nn.BatchNorm2d(out_ch),
                                      nn.ReLU(inplace=True))
        nn.init.kaiming_normal_(self.features[0].weight, mode="fan_out", nonlinearity="relu")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_ch, n_cls * n_trans)

    def forward(self, f: torch.Tensor, return_features: bool = False):
        in_ch = self.features[0].in_channels
        if f.dim() != 4 or f.shape[1] != in_ch:
            raise ValueError(f"SADHead: features must have shape [B, {in_ch}, H, W], got {tuple(f.shape)}")
        h = self.pool(self.features(f)).flatten(1)
        logits = self.fc(h)
        return (logits, h) if return_features else logits


# --------------------------------------------------------------------------------------------------------------
# PS-KD: the bank of last epoch's predictions
# --------------------------------------------------------------------------------------------------------------


class EpochTargetBank(nn.Module):
    """Each training sample's most recent softmax prediction, for PS-KD's progressive soft targets.

    Buffers (so they are checkpointed with the model and a resumed run continues exactly): ``probs
    [n_samples, n_classes]`` float32 and ``seen [n_samples]`` bool (whether a sample has a stored prediction).
    Read a batch's targets with :meth:`targets` *before* writing its new predictions with :meth:`update`: a sample is
    visited once an epoch, so what it reads is its prediction of the previous epoch (or of an earlier one, for a sample
    that the epoch's dropped last batch skipped).
    """

    def __init__(self, n_samples: int, n_classes: int):
        super().__init__()
        _check_int("n_samples", n_samples, 1)
        _check_int("n_classes", n_classes, 2)
        self.register_buffer("probs", torch.zeros(n_samples, n_classes))
        self.register_buffer("seen", torch.zeros(n_samples, dtype=torch.bool))

    @staticmethod
    def alpha(epoch: int, epochs: int, alpha_max: float = 0.8) -> float:
        """PS-KD's weight of the past prediction in epoch ``epoch`` (0-based) of ``epochs``:
        ``alpha_max * (epoch + 1) / epochs``, growing linearly to ``alpha_max`` in the last epoch."""
        _check_int("epochs", epochs, 1)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < epochs:
            raise ValueError(f"epoch must be an integer in [0, {epochs}), got {epoch!r}")
        a = check_nonnegative("alpha_max", alpha_max)
        if a > 1:
            raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max!r}")
        return a * (epoch + 1) / epochs

    def _check_index(self, index: torch.Tensor) -> None:
        n = self.probs.shape[0]
        if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.dim() != 1:
            raise ValueError(f"index must be an int64 tensor [B] of sample indices, got "
                             f"{getattr(index, 'dtype', type(index).__name__)} {tuple(getattr(index, 'shape', ()))}")
        if index.device != self.probs.device:
            raise ValueError(f"index is on {index.device} but the bank is on {self.probs.device}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ValueError(f"index must hold sample indices in [0, {n}), got values in "
                             f"[{int(index.min())}, {int(index.max())}]")

    def targets(self, index: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
        """PS-KD soft targets ``(1 - alpha) onehot(y) + alpha p_prev`` of samples ``index [B]`` with labels ``y [B]``
        -> ``[B, n_classes]`` float32, rows summing to 1; a sample without a stored prediction gets ``onehot(y)``."""
        self._check_index(index)
        a = check_nonnegative("alpha", alpha)
        if a > 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        onehot = torch.zeros(len(index), self.probs.shape[1], device=self.probs.device)
        check_labels(y, onehot)
        onehot.scatter_(1, y[:, None], 1.0)
        past = torch.where(self.seen[index, None], self.probs[index], onehot)
        return (1 - a) * onehot + a * past

    @torch.no_grad()
    def update(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        """Store the predictions ``probs [B, n_classes]`` (probabilities, e.g. a softmax) of samples ``index [B]``.

        Under ``torch.distributed``, every rank calls this with its own batch (of the same size on every rank, as
        the harness's batches are) and all ranks store the all-gathered ``(index, probs)`` of all of them, so the
        banks stay identical."""
        self._check_index(index)
        if not isinstance(probs, torch.Tensor) or not probs.is_floating_point() or probs.shape != (
                len(index), self.probs.shape[1]):
            raise ValueError(f"probs must be a floating tensor [{len(index)}, {self.probs.shape[1]}], got "
                             f"{getattr(probs, 'dtype', type(probs).__name__)} {tuple(getattr(probs, 'shape', ()))}")
        if not torch.isfinite(probs).all():
            raise ValueError("probs must be finite")
        probs = probs.detach().to(self.probs.dtype)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            all_index, all_probs = [torch.empty_like(index) for _ in range(world)], [
                torch.empty_like(probs) for _ in range(world)]
            dist.all_gather(all_index, index.contiguous())
            dist.all_gather(all_probs, probs.contiguous())
            index, probs = torch.cat(all_index), torch.cat(all_probs)
        self.probs[index] = probs
        self.seen[index] = True


# --------------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------------


def _check_aux(logits: torch.Tensor, aux_logits, aux_features, need_features: bool) -> int:
    """Validate the heads' outputs against the final logits; returns M."""
    B, N = logits.shape
    if not isinstance(aux_logits, Sequence) or isinstance(aux_logits, torch.Tensor) or not aux_logits:
        raise ValueError("aux_logits must be a non-empty list of [B, M, N * M] tensors, one per auxiliary head")
    M = None
    for i, a in enumerate(aux_logits):
        name = f"aux_logits[{i}]"
        if not isinstance(a, torch.Tensor) or not a.is_floating_point() or a.dim() != 3:
            raise ValueError(f"{name} must be a floating tensor [B, M, N * M], got "
                             f"{getattr(a, 'dtype', type(a).__name__)} {tuple(getattr(a, 'shape', ()))}")
        if a.shape[0] != B:
            raise ValueError(f"{name} has batch {a.shape[0]}, expected {B} (as logits)")
        M = a.shape[1] if M is None else M
        if a.shape[1] != M:
            raise ValueError(f"{name} has {a.shape[1]} transformations, expected {M} (as aux_logits[0])")
        if a.shape[2] != N * M:
            raise ValueError(f"{name} has {a.shape[2]} joint classes, expected {N * M} = {N} classes (as logits) "
                             f"x {M} transformations")
        if a.device != logits.device:
            raise ValueError(f"{name} is on {a.device} but logits are on {logits.device}")
    if need_features:
        if not isinstance(aux_features, Sequence) or isinstance(aux_features, torch.Tensor) or len(
                aux_features) != len(aux_logits):
            raise ValueError(f"aux_features must be a list of {len(aux_logits)} tensors [B, M, D] (one per head) when "
                             "feat_weight > 0")
        for i, h in enumerate(aux_features):
            if (not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.dim() != 3
                    or h.shape[:2] != (B, M) or h.shape[2] != aux_features[0].shape[2]):
                raise ValueError(f"aux_features[{i}] must be a floating tensor [{B}, {M}, D] with the D of "
                                 f"aux_features[0], got {tuple(getattr(h, 'shape', ()))}")
    return M


def lsskd_loss(logits: torch.Tensor, aux_logits: Sequence[torch.Tensor], prev_targets: torch.Tensor,
               y: torch.Tensor, tau: float = 3.0, sad_weight: float = 1.0, kd_weight: float = 1.0,
               ens_weight: float = 0.0, feat_weight: float = 0.0, aux_features: Sequence[torch.Tensor] | None = None,
               reduction: str = "mean") -> torch.Tensor:
    """LSSKD's training loss (reconstructed; see the module docstring for what follows which source).

    Shapes: ``logits [B, N]`` of the final classifier on the (unrotated) images; ``aux_logits``: L tensors
    ``[B, M, N * M]``, head l (shallowest first) on the M rotated copies ``x~_j`` (joint columns as in
    :func:`sad_labels`); ``prev_targets [B, N]``: PS-KD soft targets (rows summing to 1, from
    :meth:`EpochTargetBank.targets`); ``y [B]`` int64; ``aux_features``: L tensors ``[B, M, D]`` (the heads' pooled
    features), needed only when ``feat_weight > 0``. With ``s_t(v) = softmax(v / t)``, ``a_{l,j}`` = head l on
    ``x~_j`` and ``sg`` = stop-gradient, per sample::

        L =  -sum_c q_c log s_1(z)_c                                          PS-KD on the final classifier
           + sad_weight  * sum_l mean_j CE(a_{l,j}, y M + j)                  self-supervised augmented task
           + kd_weight * tau^2 * sum_{l<L} mean_j KL(sg s_tau(a_{l+1,j}) || s_tau(a_{l,j}))   deeper head -> shallower
           + ens_weight * tau^2 * KL(sg pbar || s_tau(z))                      heads' ensemble -> final classifier
           + feat_weight * sum_{l<L} mean_{j,d} (h_{l,j,d} - sg h_{l+1,j,d})^2     L2 feature alignment

    where ``pbar = mean_l sum_j' s_tau(a_{l,0})_{(c, j')}`` is the heads' mean rotation-marginal class distribution
    of the unrotated view. At epoch 0 (``q = onehot(y)``) the first term is the plain cross-entropy. The teachers
    (deeper heads, ``pbar``, ``q``) are detached inside: no gradient flows from a student term into its teacher.
    Returns the reduction (``"mean"`` / ``"sum"`` over the batch, ``"none"``: ``[B]``).
    """
    check_logits("logits", logits)
    check_labels(y, logits)
    B, N = logits.shape
    tau = check_positive("tau", tau)
    w_sad, w_kd = check_nonnegative("sad_weight", sad_weight), check_nonnegative("kd_weight", kd_weight)
    w_ens = check_nonnegative("ens_weight", ens_weight)
    w_feat = check_nonnegative("feat_weight", feat_weight)
    M = _check_aux(logits, aux_logits, aux_features, need_features=w_feat > 0 and len(aux_logits) > 1)
    if (not isinstance(prev_targets, torch.Tensor) or not prev_targets.is_floating_point()
            or prev_targets.shape != (B, N)):
        raise ValueError(f"prev_targets must be a floating tensor [{B}, {N}] of soft targets, got "
                         f"{getattr(prev_targets, 'dtype', type(prev_targets).__name__)} "
                         f"{tuple(getattr(prev_targets, 'shape', ()))}")
    if prev_targets.device != logits.device:
        raise ValueError(f"prev_targets is on {prev_targets.device} but logits are on {logits.device}")
    q = float_logits(prev_targets).detach()
    check_probability_rows("prev_targets", q)

    z = float_logits(logits)
    aux = [float_logits(a) for a in aux_logits]
    per = -(q.to(z.dtype) * F.log_softmax(z, 1)).sum(1)

    joint_y = sad_labels(y[:, None], torch.arange(M, device=y.device)[None, :], M)  # [B, M]
    sad = sum(F.cross_entropy(a.flatten(0, 1), joint_y.flatten(), reduction="none").view(B, M).mean(1) for a in aux)
    per = per + w_sad * sad

    log_s = [F.log_softmax(a / tau, 2) for a in aux]  # [B, M, N M] each
    layered = sum(kl_rows(log_s[i + 1].detach().flatten(0, 1), log_s[i].flatten(0, 1)).view(B, M).mean(1)
                  for i in range(len(aux) - 1)) if len(aux) > 1 else torch.zeros_like(per)
    pbar = torch.stack([marginal_classes(ls[:, 0].detach().exp(), M) for ls in log_s]).mean(0)  # [B, N]
    ensemble = kl_rows(pbar.clamp_min(torch.finfo(pbar.dtype).tiny).log(), F.log_softmax(z / tau, 1))
    per = per + tau * tau * (w_kd * layered + w_ens * ensemble)

    if w_feat > 0 and len(aux) > 1:
        h = [float_logits(f) for f in aux_features]
        per = per + w_feat * sum(((h[i] - h[i + 1].detach()) ** 2).mean((1, 2)) for i in range(len(h) - 1))
    return reduce(per, reduction)


class LSSKDLoss(nn.Module):
    """:func:`lsskd_loss` as a module holding its hyperparameters:
    ``LSSKDLoss(tau, ...)(logits, aux_logits, prev_targets, y, aux_features=None)``."""

    def __init__(self, tau: float = 3.0, sad_weight: float = 1.0, kd_weight: float = 1.0, ens_weight: float = 0.0,
                 feat_weight: float = 0.0, reduction: str = "mean"):
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.sad_weight = check_nonnegative("sad_weight", sad_weight)
        self.kd_weight = check_nonnegative("kd_weight", kd_weight)
        self.ens_weight = check_nonnegative("ens_weight", ens_weight)
        self.feat_weight = check_nonnegative("feat_weight", feat_weight)
        self.reduction = reduction

    def forward(self, logits, aux_logits, prev_targets, y, aux_features=None):
        return lsskd_loss(logits, aux_logits, prev_targets, y, self.tau, self.sad_weight, self.kd_weight,
                          self.ens_weight, self.feat_weight, aux_features, self.reduction)
