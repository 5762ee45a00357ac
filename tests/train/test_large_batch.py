"""The ``large-batch`` method ("train longer, generalize better"): ghost BN conversion and the lr / epoch rules."""

import math

import pytest
import torch

import pyfast
from pyfast.harness import TrainConfig, train
from pyfast.registry import METHODS, MODELS


def method(**kw):
    method_args = kw.pop("method_args", {})
    return METHODS.get("large-batch").builder(TrainConfig(method="large-batch", method_args=method_args, **kw))


def test_batch_norms_become_ghost_batch_norms_with_their_state():
    m = method(batch_size=64, method_args={"ghost_batch_size": 16})
    model = MODELS.get("resnet18").builder(10, width=0.125)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bns = sum(isinstance(x, torch.nn.BatchNorm2d) for x in model.modules())
    model = m.prepare_model(model)
    ghosts = [x for x in model.modules() if isinstance(x, pyfast.nn.GhostBatchNorm2d)]
    assert len(ghosts) == bns > 0 and all(g.ghost_batch_size == 16 for g in ghosts)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    model(torch.randn(40, 3, 32, 32)).sum().backward()  # 16 + 16 + 8: a remainder ghost batch
    assert ghosts[0].num_batches_tracked.item() == 3


def test_learning_rate_and_regime_rules():
    m = method(batch_size=512, lr=0.1, epochs=10, method_args={"base_batch_size": 128})
    assert m.lr() == pytest.approx(0.2)  # sqrt(512 / 128) = 2
    assert m.stages()[0].epochs == 40  # 10 x 512 / 128
    params = [torch.nn.Parameter(torch.zeros(2))]
    model = torch.nn.Module()
    model.p = params[0]
    assert m.param_groups(model)[0]["lr"] == pytest.approx(0.2)
    lin = method(batch_size=512, lr=0.1, epochs=10, method_args={"base_batch_size": 128, "lr_scaling": "linear",
                                                                  "regime_adaptation": False})
    assert lin.lr() == pytest.approx(0.4) and lin.stages()[0].epochs == 10
    small = method(batch_size=32, epochs=3, method_args={"base_batch_size": 128})
    assert small.stages()[0].epochs == 1 and small.lr() == pytest.approx(2e-3 * math.sqrt(0.25))


@pytest.mark.parametrize(("args", "match"), [
    ({"ghost_batch_size": 0}, "ghost_batch_size must be an int >= 1"),
    ({"base_batch_size": 1.5}, "base_batch_size must be an int >= 1"),
    ({"lr_scaling": "cubic"}, "lr_scaling must be one of sqrt, linear, none"),
    ({"regime_adaptation": "yes"}, "regime_adaptation must be true or false"),
    ({"ghost": 4}, "unknown option"),
])
def test_bad_method_args(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        method(method_args=args)


def test_a_short_run_trains_with_ghost_bn_and_the_adapted_regime(tmp_path):
    logs = []
    cfg = TrainConfig(method="large-batch", model="resnet18", model_args={"width": 0.125}, batch_size=16, epochs=1,
                      max_steps_per_epoch=1, progress=False, out=str(tmp_path),
                      method_args={"ghost_batch_size": 4, "base_batch_size": 8})
    history = train(cfg, log=logs.append)
    assert len(history) == 2  # 1 epoch x 16 / 8
    assert all(math.isfinite(r["train_loss"]) for r in history)
