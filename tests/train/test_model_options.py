"""Every registered model's builder refuses a bad option with a ValueError / TypeError that names the option.

``pyfast train --model NAME --model-arg KEY=VALUE`` hands the options to the builder, and the harness turns those two
exception types (only) into exit status 2 with the message; anything else is a traceback. The table test tries each
option of each model with values of the wrong type and out of range; the property test draws one option and a value
at a time and requires a working model or a clear error, never another exception.
"""

from __future__ import annotations

import math
import re
import traceback
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyfast
from pyfast.registry import MODELS

NAN, INF = math.nan, math.inf
PYFAST_DIR = Path(pyfast.__file__).resolve().parent

# Valid options of every model, tiny: a model built in the property test runs its forward in a fraction of a second.
BASE = {
    "vit-tiny": {"dim": 24, "depth": 1, "num_heads": 3},
    "vit-small": {"dim": 24, "depth": 1, "num_heads": 6},
    "resnet18": {"width": 0.0625},
    "vgg16": {"width": 0.0625, "hidden": 16},
    "vgg16-snn": {"width": 0.0625, "hidden": 16, "T": 2},
    "snn-small": {"T": 2, "channels": [4, 8], "hidden": 16},
    "spectformer": {"dim": 24, "depth": 2, "alpha": 1, "num_heads": 3},
    "coswin": {"embed_dim": 12, "depths": [1, 1, 1], "heads": [3, 6, 12]},
    "astroformer": {"embed_dims": [8, 16, 32, 32], "depths": [1, 1, 1, 1], "stem_width": 8, "head_hidden": 16},
    "gcab-vit": {"dim": 24, "depth": 2, "num_heads": 3, "num_tasks": 2},
}
NUM_CLASSES = 4  # divisible by gcab-vit's num_tasks above

# Bad values per kind of option.
INT = [0, -1, 1.5, 2.0, NAN, INF, "8", [8], None, True]  # an integer >= 1
INT0 = [-1, 1.5, NAN, INF, "1", [1], None, True]  # an integer >= 0
POSITIVE = [0, -1, -0.5, NAN, INF, -INF, "1", [1], None, True]  # a finite number > 0
DROP = [-0.1, 1, 1.5, NAN, INF, "0.1", [0.1], None, True]  # a rate in [0, 1)
INTS = [0, 1.5, "1", None, [], [0], [-1], [1.5], [True], [NAN], [[1]], {"a": 1}]  # a list of integers >= 1
NAME = ["nope", 1, 1.5, NAN, None, ["softmax"], True]  # a name from a fixed set

COMMON = {"num_classes": INT, "in_channels": INT, "image_size": INT}
VIT = {**COMMON, "patch": INT, "dim": INT, "depth": INT, "num_heads": INT, "mlp_ratio": POSITIVE, "drop": DROP,
       "attention": NAME, "attention_args": ["G=1", [("G", 1)], 1, True]}
VGG = {**COMMON, "image_size": [*INT, 16, 64], "width": POSITIVE, "hidden": INT, "dropout": DROP}
OPTIONS = {
    "vit-tiny": VIT,
    "vit-small": VIT,
    "resnet18": {**COMMON, "width": [*POSITIVE, [0.5]]},
    "vgg16": VGG,
    "vgg16-snn": {**VGG, "T": INT, "threshold": POSITIVE, "leak": [-0.1, 1.5, NAN, INF, "1", [1], None, True],
                  "surrogate": NAME, "alpha": POSITIVE, "backend": NAME},
    "snn-small": {**COMMON, "image_size": [*INT, 10], "T": INT, "channels": [*INTS, [4], [4, 8, 16]], "hidden": INT,
                  "bn_momentum": [0, -0.1, 1.5, NAN, INF, "0.1", [0.1], True]},
    "spectformer": {**COMMON, "patch": INT, "dim": INT, "depth": INT, "num_heads": INT, "mlp_ratio": POSITIVE,
                    "alpha": [*INT0, 3], "drop": DROP, "drop_path": DROP},
    "coswin": {**COMMON, "patch": INT, "embed_dim": INT, "depths": INTS, "heads": INTS, "window": INT,
               "mlp_ratio": POSITIVE, "drop_path": DROP},
    "astroformer": {**COMMON, "variant": [-1, 6, 1.5, "0", None, [0], True], "embed_dims": INTS, "depths": INTS,
                    "stem_width": INT, "head_hidden": INT, "stem_stride": [x for x in INT if x is not None],
                    "dim_head": INT, "drop_rate": DROP, "drop_path_rate": DROP},
    "gcab-vit": {**COMMON, "num_tasks": INT, "patch": INT, "dim": INT, "depth": INT, "num_heads": INT,
                 "mlp_ratio": POSITIVE, "s_max": POSITIVE},
}

# Options that are valid one by one but not together: (model, options, the option names the message must give).
RELATIONS = [
    ("vit-tiny", {"dim": 10, "num_heads": 3}, ["dim", "num_heads"]),
    ("vit-tiny", {"image_size": 30}, ["image_size", "patch"]),
    ("vit-tiny", {"patch": 64}, ["image_size", "patch"]),
    ("vit-tiny", {"mlp_ratio": 0.01}, ["mlp_ratio", "dim"]),
    ("vit-tiny", {"mlp_ratio": 1e308}, ["mlp_ratio", "dim"]),
    ("spectformer", {"alpha": 3}, ["alpha", "depth"]),
    ("spectformer", {"dim": 25}, ["dim", "num_heads"]),
    ("spectformer", {"image_size": 30}, ["image_size", "patch"]),
    ("spectformer", {"mlp_ratio": 0.01}, ["mlp_ratio", "dim"]),
    ("coswin", {"window": 3}, ["window"]),
    ("coswin", {"embed_dim": 10}, ["embed_dim", "heads"]),
    ("coswin", {"depths": [1, 1]}, ["depths", "heads"]),
    ("coswin", {"image_size": 36}, ["image_size", "patch"]),
    ("coswin", {"mlp_ratio": 0.01}, ["mlp_ratio", "embed_dim"]),
    ("astroformer", {"embed_dims": [8, 16, 32, 48]}, ["embed_dims", "dim_head"]),
    ("astroformer", {"depths": [1, 1, 1]}, ["embed_dims", "depths"]),
    ("astroformer", {"embed_dims": [8], "depths": [1]}, ["embed_dims", "depths"]),
    ("astroformer", {"stem_stride": 4}, ["image_size", "stem_stride"]),
    ("gcab-vit", {"num_tasks": 3}, ["num_tasks", "num_classes"]),
    ("gcab-vit", {"dim": 20}, ["dim", "num_heads"]),
    ("gcab-vit", {"image_size": 30}, ["image_size", "patch"]),
    ("gcab-vit", {"mlp_ratio": 0.01}, ["mlp_ratio", "dim"]),
    ("snn-small", {"image_size": 10}, ["image_size"]),
    ("vgg16", {"image_size": 64}, ["image_size"]),
]


def _build(name: str, **options):
    """The registered builder of ``name`` on BASE's options, ``options`` replacing them."""
    return MODELS.get(name).builder(**{"num_classes": NUM_CLASSES, **BASE[name], **options})


def _assert_names(err: Exception, options: dict, option_names: list[str]) -> None:
    """``err`` was raised by pyfast's own checks (not deep inside torch) and its message names ``option_names``."""
    message = str(err)
    raised_in = Path(traceback.extract_tb(err.__traceback__)[-1].filename).resolve()
    assert raised_in.is_relative_to(PYFAST_DIR), f"{options}: raised in {raised_in}: {message}"
    for option in option_names:
        assert re.search(rf"\b{option}\b", message), f"{options}: the message does not name {option}: {message}"


def _assert_refused(name: str, options: dict, option_names: list[str]) -> None:
    """Building ``name`` with ``options`` raises a ValueError / TypeError naming each of ``option_names``."""
    with pytest.raises((ValueError, TypeError)) as err:
        _build(name, **options)
    _assert_names(err.value, options, option_names)


def test_every_registered_model_is_covered_here():
    assert set(MODELS.names()) == set(OPTIONS) == set(BASE)


@pytest.mark.parametrize("name", sorted(BASE))
def test_base_options_build_a_working_model(name):
    assert _build(name).eval()(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(("name", "option", "value"), [
    pytest.param(name, option, value, id=f"{name}-{option}={value!r}")
    for name, options in sorted(OPTIONS.items()) for option, values in options.items() for value in values
])
def test_bad_option_is_refused_naming_it(name, option, value):
    _assert_refused(name, {option: value}, [option])


@pytest.mark.parametrize(("name", "options", "option_names"), RELATIONS, ids=[f"{n}-{o}" for n, o, _ in RELATIONS])
def test_options_that_do_not_fit_together_are_refused_naming_them(name, options, option_names):
    _assert_refused(name, options, option_names)


def test_valid_options_at_their_limits_still_build():
    assert _build("spectformer", dim=25, alpha=2).blocks[1].filter.h == 8  # no attention block: num_heads unused
    assert _build("spectformer", alpha=0).blocks[0].attn.num_heads == 3
    assert _build("vit-tiny", drop=0.0, mlp_ratio=1 / 24).blocks[0].mlp.fc1.out_features == 1
    assert _build("snn-small", bn_momentum=1.0, channels=(1, 1)).readout.in_features == 16
    assert _build("snn-small", bn_momentum=None).features[0].body[1].momentum is None  # cumulative average
    assert _build("astroformer", stem_stride=None).stem[0].stride == (1, 1)
    assert len(_build("astroformer", variant=1, embed_dims=[8, 16, 32, 32], depths=[1, 1, 1, 1]).stages) == 4
    assert _build("vgg16-snn", leak=0.0, threshold=2, alpha=1).T == 2
    assert _build("resnet18", width=1e-9).fc.in_features == 1  # every stage keeps one channel


# A value of every kind an option file or --model-arg can produce, kept small: a valid draw builds a model and runs it.
VALUES = st.one_of(
    st.integers(-2, 6),
    st.floats(-1.0, 1.0),
    st.sampled_from([NAN, INF, -INF, True, False, None, "", "1", "softmax", "triangle", "auto"]),
    st.lists(st.integers(-1, 3), max_size=5),
)


@pytest.mark.parametrize("name", sorted(BASE))
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_drawn_option_builds_a_working_model_or_is_refused_naming_it(name, data):
    option = data.draw(st.sampled_from(sorted(OPTIONS[name])), label="option")
    value = data.draw(VALUES, label="value")
    try:
        model = _build(name, **{option: value})
    except (ValueError, TypeError) as err:
        _assert_names(err, {option: value}, [option])
        return
    options = {"num_classes": NUM_CLASSES, "in_channels": 3, "image_size": 32, **BASE[name], option: value}
    x = torch.randn(2, options["in_channels"], options["image_size"], options["image_size"])
    with torch.no_grad():
        logits = model.eval()(x)
    assert logits.shape == (2, options["num_classes"]) and torch.isfinite(logits).all()
