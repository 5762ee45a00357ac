"""The model zoo in ``pyfast train``: ``timm:NAME`` / ``torchvision:NAME`` models. Every test runs with network
connections refused: nothing may be downloaded."""

import contextlib
import io
import shutil
import socket
from pathlib import Path

import pytest
import torch

from pyfast import cli
from pyfast.harness import load_checkpoint
from pyfast.harness.config import TrainConfig
from pyfast.registry import MODELS

# Small zoo models (seconds a step on 2 busy cores): a narrow timm ResNet-18 and a torchvision MobileNetV3.
TIMM_RESNET = {"channels": [16, 32, 64, 128], "stem_width": 16}
ZOO = {"timm:resnet18": ["--model-arg", "channels=[16,32,64,128]", "--model-arg", "stem_width=16"],
       "torchvision:mobilenet_v3_small": ["--model-arg", "width_mult=0.25"]}
TIMM_VIT = ["--model", "timm:vit_tiny_patch16_224", "--model-arg", "patch_size=4", "--model-arg", "depth=2"]
TINY = ["--epochs", "1", "--batch-size", "8", "--max-steps-per-epoch", "1", "--no-progress"]
# pyfast.wconv.convert fails on a model with an nn.MaxPool2d(kernel_size=int), as ResNets of timm and torchvision have
# (TypeError: 'int' object is not iterable); the converters are fixed in another branch: remove this mark then
# (strict: an unexpected pass fails).
WCONV_ON_MAXPOOL = pytest.mark.xfail(strict=True, reason="pyfast.wconv.convert fails on an int MaxPool2d kernel_size")
# pyfast.mesa.convert leaves timm's ViT blocks calling the swapped attention with attn_mask=..., which it does not take
# (TypeError in the first step); fixed with the converters in another branch: remove this mark then.
MESA_ON_TIMM_VIT = pytest.mark.xfail(raises=TypeError, strict=True, reason="mesa's attention takes no attn_mask")


@pytest.fixture(scope="module", autouse=True)
def no_network():
    def refuse(*args, **kwargs):
        raise AssertionError("pyfast tried to open a network connection")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


def run(*argv) -> tuple[int, str]:
    """``pyfast train ARGV``: (exit status, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = cli.main(["train", *map(str, argv)])
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue()


def assert_fails(message: str, *argv) -> str:
    status, out = run(*argv)
    assert status == 2 and message in out and "Traceback" not in out, out
    return out


@pytest.fixture(scope="module", params=list(ZOO))
def zoo_run(request, tmp_path_factory) -> tuple[str, Path]:
    """(model name, run directory) of a one-step standard run of a zoo model: a teacher, a pyfast last.pt."""
    out = tmp_path_factory.mktemp("zoo") / "standard"
    status, log = run("--model", request.param, *ZOO[request.param], "--out", out, *TINY)
    assert status == 0, log
    return request.param, out


def test_zoo_names_resolve_and_unknown_ones_say_where_the_names_are():
    status, out = run("--list")
    assert status == 0 and "  timm:NAME " in out and "  torchvision:NAME " in out and "timm.list_models()" in out
    assert "timm:resnet18" in MODELS and "torchvision:resnet18" in MODELS
    assert "timm:nosuch" not in MODELS and "torchvision:nosuch" not in MODELS and "keras:resnet18" not in MODELS
    assert "timm:resnet18" not in MODELS.names()  # the libraries' names are resolved, not listed
    assert_fails("list timm's names with", "--model", "timm:nosuch")
    assert_fails("pyfast downloads nothing", "--model", "timm:hf-hub:timm/resnet18.a1_in1k")
    assert_fails("list them with", "--model", "torchvision:nosuch")
    # not a classification model (its builder would fetch backbone weights)
    assert_fails("unknown torchvision classification model", "--model", "torchvision:fasterrcnn_resnet50_fpn")
    assert_fails("timm:NAME, torchvision:NAME", "--model", "nosuch")


def test_builders_take_the_data_shape():
    vit = MODELS.get("timm:vit_tiny_patch16_224").builder(10, image_size=32, patch_size=4, depth=1)
    assert tuple(vit.patch_embed.img_size) == (32, 32)  # a fixed-size timm model gets img_size from the data
    gray = MODELS.get("timm:resnet18").builder(7, in_channels=1, **TIMM_RESNET)
    assert gray(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="torchvision:resnet18 takes 3-channel images.*in_channels=1"):
        MODELS.get("torchvision:resnet18").builder(10, in_channels=1)
    assert_fails("cannot take [3, 32, 32] images", *TIMM_VIT, "--model-arg", "img_size=64")
    assert_fails("rejects model_args", "--model", "torchvision:resnet18", "--model-arg", "weights=DEFAULT")
    assert TrainConfig(model="timm:resnet18").resolved().out == "runs/standard-timm-resnet18-digits"


def test_standard_run_of_a_zoo_model_resumes(zoo_run, tmp_path):
    model, first = zoo_run
    assert load_checkpoint(first / "last.pt")["config"]["model"] == model
    shutil.copytree(first, tmp_path / "run")
    status, out = run("--model", model, *ZOO[model], "--out", tmp_path / "run", *TINY, "--resume", "--epochs", "2")
    assert status == 0 and "resuming" in out and "epoch 2/2" in out, out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("method", ["standard", pytest.param("mesa", marks=MESA_ON_TIMM_VIT)])
def test_timm_vit_trains(tmp_path, method):
    status, out = run("--method", method, *TIMM_VIT, "--out", tmp_path, *TINY)
    assert status == 0 and f"{method} | timm:vit_tiny_patch16_224" in out, out
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("method", ["mesa", "weighted-conv", "large-batch", "kd"])
def test_methods_train_zoo_models(zoo_run, tmp_path, method, request):
    model, teacher = zoo_run
    if method == "weighted-conv" and model == "timm:resnet18":
        request.applymarker(WCONV_ON_MAXPOOL)
    args = {"kd": ["--method-arg", f"teacher={teacher}"], "large-batch": ["--method-arg", "ghost_batch_size=4"]}
    status, out = run("--method", method, "--model", model, *ZOO[model], "--out", tmp_path, *TINY,
                      *args.get(method, []))
    assert status == 0 and f"{method} | {model}" in out, out
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
