"""Property-based fuzz of every op family (hypothesis): random shapes (0- and 1-sized dims included), strides, dtypes
and hyperparameters. Each draw must end one of two ways:

* the ``cpp`` and ``reference`` backends both raise a ValueError or TypeError whose message names an argument of the
  op (the checks run before dispatch, so both backends say the same), or
* both return, and the C++ results (outputs and gradients) equal the reference's within the dtype's tolerance
  (:data:`pyfast.testing.TOLERANCES`), or, where they do not (always in half precision, and for large inputs in
  float32), by the project's half rule: an error against the float64 truth (the reference run on the same inputs in
  float64) at most twice the eager reference's own error at that dtype, plus a floor of the dtype's rounding at the
  magnitude of the truth.

Any other exception, a backend that raises where the other returns, or a mismatch fails with the draw. The example
counts are bounded (and the draws derandomised) so the tier costs CI well under a minute or two.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfast import ops
from pyfast.testing import HALF_TYPES, TOLERANCES, lif_inputs_with_margin
from tests.markers import needs_cpp

pytestmark = needs_cpp

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])
SIZES = st.sampled_from([1, 2, 3, 1, 2, 3, 0])  # a dimension is 0 in one draw of seven


def seeded(data):
    """``data.draw``, after seeding torch's global generator from a draw: the example's random tensors are then a
    function of the draws alone, so a failure replays (hypothesis reruns the same draws) and CI sees the same
    examples every run (``derandomize``)."""
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    return data.draw


class Raised:
    def __init__(self, error: Exception):
        self.error = error


def attempt(call, backend: str):
    """The op's results on ``backend``, or Raised(error) for a ValueError / TypeError (any other exception fails)."""
    try:
        return call(backend, False)
    except (ValueError, TypeError) as err:
        return Raised(err)


def tensor(shape, dtype, *, contiguous=True, scale=1.0, requires_grad=False, generator=None):
    """A random tensor of ``shape``; ``contiguous=False`` makes it a strided view (every other element of its last
    axis) with the same values distribution."""
    full = list(shape)
    if not contiguous and full:
        full[-1] *= 2
    t = (torch.randn(full, dtype=torch.float64, generator=generator) * scale).to(dtype)
    if not contiguous and full:
        t = t[..., ::2]
    return t.requires_grad_(requires_grad) if requires_grad else t


def with_grads(outputs, inputs):
    """outputs, then the gradients of sum(outputs * fixed weights) w.r.t. ``inputs`` (zeros where none flows)."""
    outputs = [o for o in outputs if isinstance(o, torch.Tensor)]
    grads_wanted = [i for i in inputs if isinstance(i, torch.Tensor) and i.requires_grad]
    diff = [o for o in outputs if o.requires_grad]
    if not grads_wanted or not diff:
        return [o.detach() for o in outputs]
    g = torch.Generator().manual_seed(7)
    total = sum((o.double() * torch.rand(o.shape, generator=g, dtype=torch.float64)).sum() for o in diff)
    grads = torch.autograd.grad(total, grads_wanted, allow_unused=True)
    grads = [torch.zeros_like(i) if gr is None else gr for i, gr in zip(grads_wanted, grads)]
    return [o.detach() for o in outputs] + list(grads)


def leaf(t: torch.Tensor, as64: bool, requires_grad: bool = True) -> torch.Tensor:
    """A fresh copy of ``t``'s values (in float64 for the truth run) that requires grad, with ``t``'s layout: a
    strided view (every other element of the last axis) of a leaf where ``t`` is one."""
    value = t.detach().double() if as64 and t.is_floating_point() else t.detach()
    grad = requires_grad and value.is_floating_point()
    if value.is_contiguous():
        return value.clone().requires_grad_(grad)
    base = torch.zeros(*value.shape[:-1], 2 * value.shape[-1], dtype=value.dtype)
    base[..., ::2] = value
    return base.requires_grad_(grad)[..., ::2]


def check(call, argnames: tuple[str, ...], dtype: torch.dtype, what: str) -> None:
    """The property of the module docstring for one draw. ``call(backend, as64)`` runs the op and returns its results
    (``as64``: on float64 copies of the same inputs, for the truth of a half-precision draw)."""
    ref, cpp = attempt(call, "reference"), attempt(call, "cpp")
    if isinstance(ref, Raised) or isinstance(cpp, Raised):
        assert isinstance(ref, Raised) and isinstance(cpp, Raised), (
            f"{what}: reference {'raised ' + repr(ref.error) if isinstance(ref, Raised) else 'returned'}, cpp "
            f"{'raised ' + repr(cpp.error) if isinstance(cpp, Raised) else 'returned'}")
        for side in (ref, cpp):
            message = str(side.error)
            assert any(name in message for name in argnames), f"{what}: {message!r} names none of {argnames}"
        return
    assert len(ref) == len(cpp), what
    rtol, atol = TOLERANCES[dtype]
    truth = None
    for i, (r, c) in enumerate(zip(ref, cpp)):
        assert r.shape == c.shape and r.dtype == c.dtype, f"{what}: result {i}: {c.shape}/{c.dtype} vs {r.shape}/{r.dtype}"
        if not r.is_floating_point():
            assert torch.equal(c, r), f"{what}: result {i}"
        elif not torch.allclose(c.double(), r.double(), rtol=rtol, atol=atol, equal_nan=True):
            # Not equal at the dtype's tolerance (always so in half precision, where the eager reference rounds every
            # step): the rule against the float64 truth of the same inputs decides.
            truth = call("reference", True) if truth is None else truth
            within_rounding(truth[i], r, c, dtype, f"{what}: result {i}")


def within_rounding(t: torch.Tensor, r: torch.Tensor, c: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """The kernel's error against the float64 truth ``t`` is at most twice the eager reference's ``r``, plus a floor
    of the dtype's rounding at the magnitude of the truth; NaN and infinity where the truth has them."""
    finite = torch.isfinite(t)
    assert torch.equal(finite, torch.isfinite(c.double())), f"{what}: finite where the truth is not, or the reverse"
    if not finite.any():
        return
    scale = 1.0 + t[finite].abs().max().item()
    err = (c.double() - t).abs()[finite].max().item()
    ref_err = (r.double() - t).abs()[finite].max().item()
    floor = {torch.bfloat16: 4e-2, torch.float16: 5e-3, torch.float32: 1e-5, torch.float64: 1e-12}[dtype] * scale
    assert err <= 2 * ref_err + floor, f"{what}: cpp error {err:.3g} > 2 x the reference's {ref_err:.3g} + {floor:.3g}"


def pick(draw, valid, invalid=(), tensor_ok=False):
    """A value that is one of ``valid`` in five draws of six, else one of ``invalid`` (so most draws run the op and
    the rest probe its checks); a number may come as a 0-d float tensor where ``tensor_ok``."""
    v = draw(st.sampled_from(list(valid) if not invalid or draw(st.integers(0, 5)) < 5 else list(invalid)))
    if tensor_ok and isinstance(v, float) and draw(st.booleans()):
        return torch.tensor(v)
    return v


# --------------------------------------------------------------------------------------------------------------
# The families
# --------------------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_lif(data):
    draw = seeded(data)
    dtype = draw(DTYPES)
    shape = (draw(SIZES), *draw(st.lists(SIZES, min_size=0, max_size=2)))
    tau = pick(draw, [2.0, 1.0, 4.0], [0.5, 0.0, -1.0, math.nan, math.inf], tensor_ok=True)
    v_th = pick(draw, [1.0, 0.5], [0.0, -1.0, math.nan, math.inf], tensor_ok=True)
    v_reset = pick(draw, [0.0, None, -0.5], [math.nan, math.inf])
    decay_input, detach_reset = draw(st.booleans()), draw(st.booleans())
    surrogate = pick(draw, ["sigmoid", "atan", "triangle"], ["relu", ""])
    alpha = pick(draw, [None, 2.0, 0.5], [0.0, -1.0, math.nan])
    use_v0 = draw(st.booleans())
    valid = all(isinstance(h, (int, float, torch.Tensor)) for h in (tau, v_th)) and \
        math.isfinite(float(tau)) and float(tau) >= 1 and math.isfinite(float(v_th)) and float(v_th) > 0 and \
        (v_reset is None or math.isfinite(v_reset))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    v0 = torch.zeros(shape[1:], dtype=dtype) if use_v0 else None
    if valid and all(shape):
        x = lif_inputs_with_margin(shape, k=1 / float(tau), v_th=float(v_th), v_reset=v_reset,
                                   decay_input=decay_input, v0=v0, margin=0.05 if dtype in HALF_TYPES else 1e-3,
                                   generator=g, dtype=dtype)
    else:
        x = tensor(shape, dtype, generator=g)

    def call(backend, as64):
        xs = leaf(x, as64)
        v0s = None if v0 is None else leaf(v0, as64)
        spikes, v = ops.lif(xs, v0s, tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=decay_input,
                            surrogate=surrogate, alpha=alpha, detach_reset=detach_reset, return_v=True,
                            backend=backend)
        return with_grads([spikes, v], [xs, v0s])

    check(call, ("x", "v0", "tau", "v_threshold", "v_reset", "surrogate", "alpha"), dtype,
          f"lif{shape} {dtype} tau={tau} v_th={v_th} v_reset={v_reset} {surrogate} alpha={alpha}")


@FUZZ
@given(data=st.data())
def test_crrelu(data):
    draw = seeded(data)
    dtype = draw(DTYPES)
    shape = (draw(SIZES), draw(SIZES), *draw(st.lists(SIZES, max_size=1)))
    dim = pick(draw, [1, -1, 0], [5, -7])
    channels = shape[dim] if -len(shape) <= dim < len(shape) else 1
    eps_shape = pick(draw, [(), (1,), (channels,)], [(channels + 1,), (1, 1)])
    eps_value = pick(draw, [0.01, 0.3, -0.2], [math.nan, math.inf])
    x = tensor(shape, dtype, contiguous=draw(st.booleans()), scale=draw(st.sampled_from([1.0, 5.0])))

    def call(backend, as64):
        xs = leaf(x, as64)
        eps = torch.full(eps_shape, eps_value, dtype=torch.float64 if as64 else torch.float32, requires_grad=True)
        return with_grads([ops.crrelu(xs, eps, dim, backend=backend)], [xs, eps])

    check(call, ("x", "eps", "dim"), dtype, f"crrelu{shape} {dtype} eps{eps_shape}={eps_value} dim={dim}")


@FUZZ
@given(data=st.data())
def test_ghost_batch_norm(data):
    draw = seeded(data)
    dtype = draw(DTYPES)
    shape = (draw(SIZES), draw(SIZES), *draw(st.lists(SIZES, max_size=2)))
    c = shape[1]
    stat_shape = pick(draw, [(c,)], [(c + 1,)])
    use_affine, training = draw(st.booleans()), draw(st.booleans())
    use_stats = pick(draw, [True, False] if training else [True], [False])  # eval needs running statistics
    momentum = pick(draw, [0.1, 0.0, 1.0], [1.5, -0.1, math.nan])
    eps = pick(draw, [1e-5, 1e-3], [0.0, -1.0, math.nan])
    ghost = pick(draw, [1, 2, 3, 128], [0, -1, 2.0])
    x = tensor(shape, dtype, contiguous=draw(st.booleans()), scale=3.0)
    mean0, var0 = torch.randn(stat_shape), torch.rand(stat_shape) + 0.5

    def call(backend, as64):
        xs = leaf(x, as64)
        rm, rv = (mean0.clone(), var0.clone()) if use_stats else (None, None)
        w = torch.ones(stat_shape, requires_grad=True) if use_affine else None
        b = torch.zeros(stat_shape, requires_grad=True) if use_affine else None
        if as64:
            rm, rv = (None, None) if rm is None else (rm.double(), rv.double())
            w, b = (None, None) if w is None else (w.detach().double().requires_grad_(), b.detach().double()
                                                   .requires_grad_())
        y = ops.ghost_batch_norm(xs, rm, rv, w, b, training, momentum, eps, ghost, backend=backend)
        return with_grads([y], [xs, w, b]) + ([rm.float(), rv.float()] if rm is not None else [])

    check(call, ("x", "running_mean", "running_var", "weight", "bias", "momentum", "eps", "ghost_batch_size",
                 "ghost batch"), dtype,
          f"ghost_bn{shape} {dtype} stats{stat_shape if use_stats else None} training={training} m={momentum} "
          f"eps={eps} ghost={ghost}")


@FUZZ
@given(data=st.data())
def test_multi_sample_dropout_loss(data):
    draw = seeded(data)
    dtype = draw(DTYPES)
    b, d, c = draw(SIZES), draw(SIZES), draw(st.sampled_from([1, 2, 5]))
    bias_kind = pick(draw, ["none", "ok"], ["int64", "wrong shape"])
    target_kind = pick(draw, ["ok"], ["out of range", "negative", "int32"])
    num_samples = pick(draw, [1, 2, 8], [0, -1])
    p = pick(draw, [0.0, 0.3, 0.9], [1.0, -0.1, math.nan])
    h = tensor((b, d), dtype, contiguous=draw(st.booleans()))
    weight = tensor((c, d), dtype)
    target = torch.randint(0, c, (b,))
    if target_kind == "out of range" and b:
        target[0] = c
    elif target_kind == "negative" and b:
        target[0] = -1
    elif target_kind == "int32":
        target = target.int()

    def call(backend, as64):
        hs, ws = leaf(h, as64), leaf(weight, as64)
        bias = {"none": None, "ok": torch.zeros(c, dtype=hs.dtype), "int64": torch.zeros(c, dtype=torch.int64),
                "wrong shape": torch.zeros(c + 1, dtype=hs.dtype)}[bias_kind]
        loss, logits = ops.multi_sample_dropout_loss(hs, ws, bias, target, num_samples, p, seed=torch.tensor([3]),
                                                     backend=backend)
        return with_grads([loss, logits], [hs, ws])

    check(call, ("h", "weight", "bias", "target", "num_samples", "p"), dtype,
          f"msdrop h[{b}, {d}] C={c} {dtype} bias={bias_kind} target={target_kind} M={num_samples} p={p}")


@FUZZ
@given(data=st.data())
def test_pld_rows(data):
    draw = seeded(data)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))  # the loss is computed in float32 or float64
    b, c = draw(SIZES), draw(st.sampled_from([1, 2, 5]))
    tau = pick(draw, [1.0, 0.5, 4.0], [0.0, -1.0, math.nan, math.inf])
    scale = draw(st.sampled_from([1.0, 30.0]))
    labels_kind = pick(draw, ["ok"], ["out of range", "float"])
    student, teacher = tensor((b, c), dtype, scale=scale), tensor((b, c), dtype, scale=scale)
    labels = torch.randint(0, c, (b,))
    if labels_kind == "out of range" and b:
        labels[-1] = c
    elif labels_kind == "float":
        labels = labels.float()

    def call(backend, as64):
        s, t = leaf(student, as64), leaf(teacher, as64)
        return with_grads([ops.pld_rows(s, t, labels, tau, backend=backend)], [s, t])

    check(call, ("student", "teacher", "labels", "tau_t"), dtype,
          f"pld[{b}, {c}] {dtype} tau={tau} scale={scale} labels={labels_kind}")


@FUZZ
@given(data=st.data())
def test_wconv_weight(data):
    draw = seeded(data)
    dtype = draw(DTYPES)
    d = draw(st.sampled_from([1, 2, 3]))
    ks = tuple(pick(draw, [1, 3, 5], [2]) for _ in range(d))
    shape = (draw(SIZES), draw(SIZES), *ks)
    den_value = pick(draw, [0.7, 1.0, 0.0, -0.3], [math.nan, math.inf])
    shared = draw(st.booleans())
    allow_negative = draw(st.booleans())
    weight = tensor(shape, dtype, contiguous=draw(st.booleans()))

    def call(backend, as64):
        w = leaf(weight, as64)
        acc = torch.float64 if as64 or dtype == torch.float64 else torch.float32
        if shared:
            den = torch.full(((ks[0] - 1) // 2,), den_value, dtype=acc, requires_grad=True)
            leaves = [den]
        else:
            leaves = [torch.full(((k - 1) // 2,), den_value, dtype=acc, requires_grad=True) for k in ks]
            den = leaves
        out = ops.wconv_weight(w, den, allow_negative_den=allow_negative, backend=backend)
        return with_grads([out], [w, *leaves])

    check(call, ("weight", "den", "kernel"), dtype,
          f"wconv_weight{shape} {dtype} den={den_value} shared={shared} allow_negative={allow_negative}")


@FUZZ
@given(data=st.data())
def test_karat_attention(data):
    draw = seeded(data)
    dtype = draw(DTYPES)
    bsz, heads, n, d = draw(SIZES), draw(st.sampled_from([1, 2])), pick(draw, [1, 3], [0]), \
        draw(st.sampled_from([1, 4]))
    r, g = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2]))
    constant_term = draw(st.booleans())
    m = g + 1 if constant_term else g
    coef_n = pick(draw, [n], [n + 1])
    scale = pick(draw, [None, 0.5, 0.0], [math.nan, math.inf])
    q, k, v = (tensor((bsz, heads, n, d), dtype, contiguous=draw(st.booleans())) for _ in range(3))
    a, b, W = tensor((heads, r, coef_n, m), torch.float32), tensor((heads, r, coef_n, m), torch.float32), \
        tensor((heads, coef_n, r), torch.float32, scale=0.3)

    def call(backend, as64):
        qs, ks, vs = (leaf(t, as64) for t in (q, k, v))
        As, Bs, Ws = (leaf(t, as64 or dtype == torch.float64) for t in (a, b, W))
        out = ops.karat_attention(qs, ks, vs, As, Bs, Ws, scale, constant_term=constant_term, backend=backend)
        return with_grads([out], [qs, ks, vs, As, Bs, Ws])

    check(call, ("q", "k", "v", "a", "b", "W", "scale", "N"), dtype,
          f"karat [{bsz}, {heads}, {n}, {d}] r={r} G={g} const={constant_term} coef_n={coef_n} {dtype} "
          f"scale={scale}")


@FUZZ
@given(data=st.data())
def test_gated_class_attention(data):
    draw = seeded(data)
    dtype = draw(DTYPES)
    bsz, tokens, c = draw(SIZES), pick(draw, [1, 3], [0]), draw(st.sampled_from([4, 6]))
    heads = pick(draw, [1, 2], [3, 0, 5])
    with_bias = draw(st.booleans())
    gate_shape = pick(draw, [(c,)], [(c + 1,)])
    x = tensor((bsz, tokens, c), dtype, contiguous=draw(st.booleans()))
    weights = [tensor((c, c), dtype, scale=c ** -0.5) for _ in range(4)]
    biases = [tensor((c,), dtype) for _ in range(3)]
    gate = torch.sigmoid(torch.randn(gate_shape, dtype=torch.float64)).to(dtype)

    def call(backend, as64):
        xs, gs = leaf(x, as64), leaf(gate, as64)
        ws = [leaf(w, as64) for w in weights]
        bs = [leaf(b_, as64) if with_bias else None for b_ in biases]
        y = ops.gated_class_attention(xs, gs, ws[0], bs[0], ws[1], ws[2], bs[1], ws[3], bs[2], heads,
                                      backend=backend)
        return with_grads([y], [xs, gs, *ws, *bs])

    check(call, ("x", "gate", "wq", "wk", "wv", "wp", "bq", "bv", "bp", "num_heads"), dtype,
          f"gated x[{bsz}, {tokens}, {c}] heads={heads} bias={with_bias} gate{gate_shape} {dtype}")


@FUZZ
@given(data=st.data())
def test_mesa_quantize_and_dequantize(data):
    draw = seeded(data)
    dtype = draw(DTYPES)
    groups = draw(st.sampled_from([1, 2, 3]))
    shape = (draw(SIZES), 6 * pick(draw, [1, 2], [0]))
    dim = pick(draw, [-1, 1, 0], [2, -3])
    levels = pick(draw, [256, 16, 2], [1, 257])
    ema_decay = pick(draw, [0.9, 0.0, 1.0], [1.5, math.nan])
    initialized = draw(st.booleans())
    stochastic = draw(st.booleans())
    content = pick(draw, ["normal", "constant"], ["nan"])
    x = tensor(shape, dtype, contiguous=draw(st.booleans()), scale=2.0)
    if content == "constant":
        x = torch.full(shape, 0.5, dtype=dtype)
    elif content == "nan" and x.numel():
        x = x.clone()
        x.view(-1)[0] = math.nan
    clip, shift = torch.rand(groups) + 0.5, torch.randn(groups)

    def call(backend, as64):
        del as64  # the codes are integers: compared exactly, also for half inputs
        q, c2, s2 = ops.mesa_quantize(x, clip.clone(), shift.clone(), torch.tensor(initialized),
                                      torch.tensor([11]), dim=dim, levels=levels, ema_decay=ema_decay,
                                      stochastic=stochastic, backend=backend)
        back = ops.mesa_dequantize(q, c2, s2, dim=dim, levels=levels, dtype=torch.float32, backend=backend)
        return [q, c2, s2, back]

    check(call, ("x", "clip_val", "shift", "dim", "levels", "ema_decay", "groups"),
          torch.float32 if dtype in HALF_TYPES else dtype,
          f"mesa{shape} {dtype} G={groups} dim={dim} levels={levels} ema={ema_decay} init={initialized} "
          f"{content}")


def test_check_flags_a_backend_that_disagrees():
    """The property itself can fail: a call whose cpp result differs from the reference's is reported."""
    def call(backend, as64):
        return [torch.ones(2) * (2.0 if backend == "cpp" else 1.0)]

    with pytest.raises(AssertionError, match="result 0"):
        check(call, ("x",), torch.float32, "disagreeing op")

    def raises_on_one(backend, as64):
        if backend == "cpp":
            raise ValueError("x must be positive")
        return [torch.ones(1)]

    with pytest.raises(AssertionError, match="reference returned, cpp raised"):
        check(raises_on_one, ("x",), torch.float32, "inconsistent op")
