"""Replayable augmentations for Dataset Reinforcement: every random choice that makes one augmented image is one row
of integers (:data:`FIELDS`), and :func:`apply` turns ``(image, row)`` into that augmented image again, bit for bit,
on any device and in any batch (an image's result depends on its own row only).

Bit-exactness comes from integer arithmetic throughout: ``uint8`` pixels are processed as ``int32`` / ``int64``,
geometric ops use nearest-neighbour sampling at fixed-point (2^16) coordinates, colour ops blend with integer factors
and round with floor divisions. No float maths runs at replay time; the floats of :func:`sample_params` (erasing box
sizes) run once, at recording time, and only their integer results are stored.

The pipeline, in order (Dataset Reinforcement's CIFAR recipe at the images' own size):

1. random crop with zero padding ``p`` (the harness's crop): ``out[i, j] = x[i + dy, j + dx]``, 0 outside the image;
2. horizontal flip, only where the dataset allows it (:attr:`pyfast.data.ImageData.hflip`);
3. RandAugment: two ops drawn uniformly from :data:`OPS` at magnitude ``M`` (0..30, torchvision's 31 bins; its
   default 9), a random sign for the signed ops;
4. RandomErasing with probability 0.25: a box of 2-33 % of the area, aspect ratio 0.3-3.3 (log-uniform), filled with
   one random colour per channel.

Deviation from the spec (which follows ml-dr's CIFAR-100 recipe): images are not resized to 224 first; the crop pads
by the dataset's own ``crop_padding`` (4 for 32x32) instead of 16 at 224. Geometric ops sample the nearest pixel
(torchvision's RandAugment default is nearest too) about the image centre, and fill with 0, as torchvision's default.
RandomErasing records a random colour per box (ml-dr erases to 0); ``fill = 0`` rows replay ml-dr's choice.

RandAugment ops at level ``L`` (the stored signed magnitude, ``|L| <= 30``):

============  ===========================================================================================
identity      the image
shear_x/y     shear by ``L / 100`` (0.3 at L = 30) about the centre
translate_x/y shift by ``sign(L) * floor(|L| * 150 * W / (30 * 331))`` pixels (torchvision: 150/331 of the size)
rotate        rotate by ``L`` degrees about the centre
brightness    blend with black, factor ``1 + 3L/100`` (0.1..1.9): ``round(deg + (x - deg) * factor)``, clamped
color         blend with the grey image ``(299 R + 587 G + 114 B) / 1000`` (rounded), same factor
contrast      blend with the image's mean grey level (rounded), same factor
sharpness     blend with the 3x3 smoothed image (kernel 1 1 1 / 1 5 1 / 1 1 1, / 13, rounded; border kept)
posterize     keep ``8 - round(4 L / 30)`` bits (L >= 0)
solarize      invert the pixels ``>= 255 (1 - L / 30)`` (L >= 0)
autocontrast  per channel, stretch [min, max] to [0, 255] (rounded); a flat channel is kept
equalize      per channel, histogram equalisation with PIL's integer look-up table
============  ===========================================================================================

The magnitude-free ops store ``L = 0``; posterize and solarize store ``L = M``.
"""

from __future__ import annotations

import math

import torch

FIELDS = (
    "crop_dy",     # row shift of the padded crop, -p..p: out[i, j] = x[i + dy, j + dx]
    "crop_dx",     # column shift, -p..p
    "flip",        # 1: horizontal flip after the crop
    "op1",         # first RandAugment op, an index into OPS
    "level1",      # its signed magnitude, -30..30
    "op2",         # second RandAugment op
    "level2",      # its signed magnitude
    "erase",       # 1: RandomErasing applied
    "erase_top",   # the erased box: first row,
    "erase_left",  # first column,
    "erase_h",     # height,
    "erase_w",     # width (0 when erase is 0)
    "fill0",       # erasing colour of channel 0, 0..255
    "fill1",       # channel 1 (unused for one-channel images)
    "fill2",       # channel 2
)
NUM_FIELDS = len(FIELDS)
_F = {name: i for i, name in enumerate(FIELDS)}

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
       "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_OP = {name: i for i, name in enumerate(OPS)}
SIGNED_OPS = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
              "sharpness")
UNSIGNED_OPS = ("posterize", "solarize")
MAX_LEVEL = 30
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10  # torchvision's RandomErasing tries 10 boxes, then gives up (no erasing)

_ONE = 1 << 16  # fixed-point scale of the geometric ops
_UNSIGNED = torch.tensor([_OP[o] for o in UNSIGNED_OPS])


def _affine_table() -> torch.Tensor:
    """int64 ``[len(OPS), 2 * MAX_LEVEL + 1, 4]``: the fixed-point inverse map ``(a, b, c, d)`` of each op and level,
    source ``(u', v') = (a u + b v, c u + d v) / 2^16`` in centred coordinates. Identity for non-geometric ops.
    Computed once from exact Python integers (shears) and ``math.cos/sin`` rounded to 2^-16 (rotations)."""
    table = torch.zeros(len(OPS), 2 * MAX_LEVEL + 1, 4, dtype=torch.int64)
    table[..., 0] = table[..., 3] = _ONE
    for level in range(-MAX_LEVEL, MAX_LEVEL + 1):
        shear = round(level * _ONE / 100)
        table[_OP["shear_x"], level + MAX_LEVEL, 1] = shear
        table[_OP["shear_y"], level + MAX_LEVEL, 2] = shear
        cos, sin = round(math.cos(math.radians(level)) * _ONE), round(math.sin(math.radians(level)) * _ONE)
        table[_OP["rotate"], level + MAX_LEVEL] = torch.tensor([cos, sin, -sin, cos])
    return table


_AFFINE = {torch.device("cpu"): _affine_table()}  # per device, copied on first use


def _affine_on(device: torch.device) -> torch.Tensor:
    if device not in _AFFINE:
        _AFFINE[device] = _AFFINE[torch.device("cpu")].to(device)
    return _AFFINE[device]


def sample_params(num: int, image_shape: tuple[int, int, int], *, crop_padding: int, hflip: bool, magnitude: int = 9,
                  erase_p: float = 0.25, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``num`` augmentations of images of ``image_shape = (C, H, W)``: int16 ``[num, NUM_FIELDS]`` (:data:`FIELDS`).

    ``crop_padding``: the crop's zero padding ``p`` (shifts in ``-p..p``); ``hflip``: whether flips may be drawn;
    ``magnitude``: RandAugment's ``M`` in 0..30; ``erase_p``: probability of RandomErasing. Draws come from
    ``generator`` (a CPU generator) in a fixed order, so the same generator state gives the same rows.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ValueError(f"num must be an integer >= 0, got {num!r}")
    channels, height, width = _check_shape(image_shape)
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or not 0 <= crop_padding < min(height,
                                                                                                           width):
        raise ValueError(f"crop_padding must be an integer in [0, {min(height, width)}), got {crop_padding!r}")
    if isinstance(magnitude, bool) or not isinstance(magnitude, int) or not 0 <= magnitude <= MAX_LEVEL:
        raise ValueError(f"magnitude must be an integer in [0, {MAX_LEVEL}], got {magnitude!r}")
    if isinstance(erase_p, bool) or not isinstance(erase_p, (int, float)) or not 0.0 <= erase_p <= 1.0:
        raise ValueError(f"erase_p must be a number in [0, 1], got {erase_p!r}")
    g = generator
    p = torch.zeros(num, NUM_FIELDS, dtype=torch.int64)
    p[:, 0:2] = torch.randint(-crop_padding, crop_padding + 1, (num, 2), generator=g)
    p[:, 2] = (torch.rand(num, generator=g) < 0.5) & hflip
    ops = torch.randint(0, len(OPS), (num, 2), generator=g)
    signs = torch.randint(0, 2, (num, 2), generator=g) * 2 - 1
    signed = torch.isin(ops, torch.tensor([_OP[o] for o in SIGNED_OPS]))
    unsigned = torch.isin(ops, _UNSIGNED)
    levels = torch.where(signed, signs * magnitude, torch.where(unsigned, magnitude, 0))
    p[:, [3, 5]], p[:, [4, 6]] = ops, levels

    # RandomErasing as torchvision draws it: up to ERASE_ATTEMPTS boxes, the first that fits inside the image.
    area = height * width * torch.empty(num, ERASE_ATTEMPTS).uniform_(*ERASE_SCALE, generator=g)
    log_ratio = torch.empty(num, ERASE_ATTEMPTS).uniform_(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]),
                                                           generator=g)
    h = torch.sqrt(area * torch.exp(log_ratio)).round().long()
    w = torch.sqrt(area / torch.exp(log_ratio)).round().long()
    fits = (h >= 1) & (h < height) & (w >= 1) & (w < width)
    first = fits.long().argmax(1, keepdim=True)  # the first fitting attempt (0 if none fits; masked below)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    u_top, u_left = torch.rand(num, generator=g), torch.rand(num, generator=g)
    fill = torch.randint(0, 256, (num, 3), generator=g)
    erase = (torch.rand(num, generator=g) < erase_p) & fits.any(1)
    top = torch.minimum((u_top * (height - h + 1)).long(), height - h)  # (the minimum guards float rounding)
    left = torch.minimum((u_left * (width - w + 1)).long(), width - w)
    if channels == 1:
        fill[:, 1:] = 0
    box = torch.stack([erase.long(), top, left, h, w, *fill.unbind(1)], 1)
    p[:, 7:] = torch.where(erase[:, None], box, 0)
    return p.to(torch.int16)


def _check_shape(image_shape) -> tuple[int, int, int]:
    if len(image_shape) != 3 or any(not isinstance(s, int) or s < 1 for s in image_shape):
        raise ValueError(f"image_shape must be (C, H, W) of positive integers, got {tuple(image_shape)}")
    if image_shape[0] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (the colour ops are RGB or grey), got {image_shape[0]}")
    return tuple(image_shape)


def check_params(params: torch.Tensor, image_shape: tuple[int, int, int], name: str = "params") -> None:
    """Raise ValueError naming ``name`` unless ``params`` is an integer ``[B, NUM_FIELDS]`` tensor of valid rows for
    images of ``image_shape`` (one device sync)."""
    _, height, width = _check_shape(image_shape)
    if not isinstance(params, torch.Tensor) or params.dtype.is_floating_point or params.dtype.is_complex or \
            params.dtype == torch.bool or params.dim() != 2 or params.shape[1] != NUM_FIELDS:
        raise ValueError(f"{name} must be an integer tensor [B, {NUM_FIELDS}] (fields {', '.join(FIELDS)}), got "
                         f"{getattr(params, 'dtype', type(params).__name__)} {tuple(getattr(params, 'shape', ()))}")
    if not params.numel():
        return
    p = params.long()
    f = {name: p[:, i] for name, i in _F.items()}
    box = f["erase"] == 1
    problems = torch.stack([
        (f["crop_dy"].abs() >= height) | (f["crop_dx"].abs() >= width),
        (f["flip"] < 0) | (f["flip"] > 1) | (f["erase"] < 0) | (f["erase"] > 1),
        (p[:, [3, 5]] < 0).any(1) | (p[:, [3, 5]] >= len(OPS)).any(1) | (p[:, [4, 6]].abs() > MAX_LEVEL).any(1)
        | (torch.isin(p[:, [3, 5]], _UNSIGNED.to(p.device)) & (p[:, [4, 6]] < 0)).any(1),
        box & ((f["erase_top"] < 0) | (f["erase_left"] < 0) | (f["erase_h"] < 1) | (f["erase_w"] < 1)
               | (f["erase_top"] + f["erase_h"] > height) | (f["erase_left"] + f["erase_w"] > width)),
        ((p[:, 12:] < 0) | (p[:, 12:] > 255)).any(1),
    ]).any(1).tolist()
    what = ("crop shifts outside the image", "flip/erase flags not 0 or 1",
            "RandAugment op or level out of range (posterize and solarize take levels >= 0)",
            "erasing box outside the image", "fill colour outside 0..255")
    bad = [w for w, b in zip(what, problems) if b]
    if bad:
        raise ValueError(f"{name} holds invalid rows for {height}x{width} images: {'; '.join(bad)}")


def apply(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Replay augmentations: ``images`` uint8 ``[B, C, H, W]`` (C = 1 or 3), ``params`` integer ``[B, NUM_FIELDS]``
    (row ``b`` augments image ``b``, e.g. from :func:`sample_params`) -> uint8 ``[B, C, H, W]`` on ``images``' device.

    Exact: the same image and row give the same bytes on any device, in any batch and batch order.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be a uint8 tensor [B, C, H, W], got {getattr(images, 'dtype', type(images))} "
                         f"{tuple(getattr(images, 'shape', ()))}")
    check_params(params, tuple(images.shape[1:]))
    if params.shape[0] != images.shape[0]:
        raise ValueError(f"params has {params.shape[0]} rows for {images.shape[0]} images")
    if params.device != images.device:
        raise ValueError(f"params is on {params.device} but images are on {images.device}")
    if not images.shape[0]:
        return images.clone()
    p = params.long()
    x = _crop_flip(images, p[:, 0], p[:, 1], p[:, 2].bool()).int()
    for op_field, level_field in ((3, 4), (5, 6)):
        x = _rand_augment_op(x, p[:, op_field], p[:, level_field])
    return _erase(x, p).to(torch.uint8)


def _gather(x: torch.Tensor, src_i: torch.Tensor, src_j: torch.Tensor) -> torch.Tensor:
    """``out[b, c, i, j] = x[b, c, src_i[b, i, j], src_j[b, i, j]]``, 0 where the source is outside the image."""
    B, C, H, W = x.shape
    valid = (src_i >= 0) & (src_i < H) & (src_j >= 0) & (src_j < W)
    flat = (src_i.clamp(0, H - 1) * W + src_j.clamp(0, W - 1)).view(B, 1, H * W).expand(B, C, H * W)
    out = x.reshape(B, C, H * W).gather(2, flat).view(B, C, H, W)
    return torch.where(valid[:, None], out, torch.zeros((), dtype=x.dtype, device=x.device))


def _crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    B, _, H, W = x.shape
    i = torch.arange(H, device=x.device).view(1, H, 1)
    j = torch.arange(W, device=x.device).view(1, 1, W)
    j = torch.where(flip.view(B, 1, 1), W - 1 - j, j)
    return _gather(x, (i + dy.view(B, 1, 1)).expand(B, H, W), (j + dx.view(B, 1, 1)).expand(B, H, W))


def _geometric(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Shears, rotations and translations (and the identity) in one nearest-neighbour gather. Centred doubled
    coordinates ``u = 2 j + 1 - W`` make every pixel centre an integer; the source pixel is
    ``floor((u' + W) / 2)`` with ``u' = (a u + b v) / 2^16 - 2 t``, all in int64."""
    B, _, H, W = x.shape
    coeff = _affine_on(x.device)[op, level + MAX_LEVEL]  # [B, 4]
    a, b, c, d = (coeff[:, k].view(B, 1, 1) for k in range(4))
    shift = torch.div(level.abs() * 150 * torch.where(op == _OP["translate_x"], W, H), 30 * 331,
                      rounding_mode="floor") * level.sign()
    tx = torch.where(op == _OP["translate_x"], shift, 0).view(B, 1, 1)
    ty = torch.where(op == _OP["translate_y"], shift, 0).view(B, 1, 1)
    u = (2 * torch.arange(W, device=x.device) + 1 - W).view(1, 1, W)
    v = (2 * torch.arange(H, device=x.device) + 1 - H).view(1, H, 1)
    src_u = a * u + b * v - 2 * tx * _ONE + W * _ONE
    src_v = c * u + d * v - 2 * ty * _ONE + H * _ONE
    return _gather(x, torch.div(src_v, 2 * _ONE, rounding_mode="floor"),
                   torch.div(src_u, 2 * _ONE, rounding_mode="floor"))


def _gray(x: torch.Tensor) -> torch.Tensor:
    """int32 ``[B, 1, H, W]``: rounded ``(299 R + 587 G + 114 B) / 1000`` (the image itself for one channel)."""
    if x.shape[1] == 1:
        return x
    return torch.div(299 * x[:, 0:1] + 587 * x[:, 1:2] + 114 * x[:, 2:3] + 500, 1000, rounding_mode="floor")


def _blend(x: torch.Tensor, degenerate: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``round(deg + (x - deg) * (1 + 3 L / 100))`` clamped to 0..255, as ``floor((100 x + 3 L (x - deg) + 50) / 100)``."""
    k = 3 * level.view(-1, 1, 1, 1)
    return torch.div(100 * x + k * (x - degenerate) + 50, 100, rounding_mode="floor").clamp(0, 255)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1, / 13, rounded) inside the image; border pixels keep their value."""
    H, W = x.shape[2:]
    if H < 3 or W < 3:
        return x
    box = sum(x[:, :, 1 + di:H - 1 + di, 1 + dj:W - 1 + dj] for di in (-1, 0, 1) for dj in (-1, 0, 1))
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = torch.div(box + 4 * x[:, :, 1:-1, 1:-1] + 6, 13, rounding_mode="floor")
    return out


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    span = hi - lo
    out = torch.div((x - lo) * 510 + span, 2 * span.clamp(min=1), rounding_mode="floor")
    return torch.where(span > 0, out, x)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel: ``step = (count - count of the brightest level) // 255``; look-up table
    ``lut[v] = (cumulative count below v + step // 2) // step``; a channel with step 0 is kept (PIL's rule)."""
    B, C, H, W = x.shape
    flat = x.reshape(B * C, H * W).long()
    hist = torch.zeros(B * C, 256, dtype=torch.int64, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    top_count = hist.gather(1, flat.amax(1, keepdim=True))
    step = torch.div(H * W - top_count, 255, rounding_mode="floor")
    below = hist.cumsum(1) - hist  # pixels strictly darker than each level
    lut = torch.div(below + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1), rounding_mode="floor")
    out = lut.clamp(max=255).gather(1, flat)
    return torch.where(step > 0, out, flat).view(B, C, H, W).to(x.dtype)


def _rand_augment_op(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Apply op ``op[b]`` at level ``level[b]`` to image ``b`` of int32 ``x [B, C, H, W]``."""
    x = _geometric(x, op, level)
    out = x.clone()
    for name in ("brightness", "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast",
                 "equalize"):
        sel = (op == _OP[name]).nonzero().squeeze(1)
        if not sel.numel():
            continue
        xs, ls = x[sel], level[sel]
        if name == "brightness":
            ys = _blend(xs, torch.zeros_like(xs), ls)
        elif name == "color":
            ys = _blend(xs, _gray(xs), ls)
        elif name == "contrast":
            gray = _gray(xs)
            count = gray.shape[2] * gray.shape[3]
            mean = torch.div(gray.sum((1, 2, 3), keepdim=True) + count // 2, count, rounding_mode="floor")
            ys = _blend(xs, mean, ls)
        elif name == "sharpness":
            ys = _blend(xs, _smooth(xs), ls)
        elif name == "posterize":
            drop = torch.div(4 * ls + 15, 30, rounding_mode="floor").view(-1, 1, 1, 1).to(xs.dtype)
            ys = (xs >> drop) << drop
        elif name == "solarize":
            ys = torch.where(30 * xs >= 255 * (30 - ls.view(-1, 1, 1, 1)), 255 - xs, xs)
        elif name == "autocontrast":
            ys = _autocontrast(xs)
        else:
            ys = _equalize(xs)
        out[sel] = ys.to(out.dtype)
    return out


def _erase(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    top, left, h, w = (p[:, _F[n]].view(B, 1, 1) for n in ("erase_top", "erase_left", "erase_h", "erase_w"))
    i = torch.arange(H, device=x.device).view(1, H, 1)
    j = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (p[:, _F["erase"]].view(B, 1, 1) == 1) & (i >= top) & (i < top + h) & (j >= left) & (j < left + w)
    fill = p[:, 12:12 + C].to(x.dtype).view(B, C, 1, 1)
    return torch.where(inside[:, None], fill, x)
