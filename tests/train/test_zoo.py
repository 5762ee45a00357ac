"""The model zoo in ``pyfast train``: ``timm:NAME`` / ``torchvision:NAME`` models, ``--pretrained FILE`` and the
model each method needs (``--list``). Every test runs with network connections refused: nothing may be downloaded."""

import contextlib
import io
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pyfast import cli
from pyfast.harness import load_checkpoint
from pyfast.harness.build import build_model, load_data, make_method
from pyfast.harness.config import TrainConfig
from pyfast.registry import METHODS, MODELS

# Small zoo models (seconds a step on 2 busy cores): a narrow timm ResNet-18 and a torchvision MobileNetV3.
TIMM_RESNET = {"channels": [16, 32, 64, 128], "stem_width": 16}
ZOO = {"timm:resnet18": ["--model-arg", "channels=[16,32,64,128]", "--model-arg", "stem_width=16"],
       "torchvision:mobilenet_v3_small": ["--model-arg", "width_mult=0.25"]}
TIMM_VIT = ["--model", "timm:vit_tiny_patch16_224", "--model-arg", "patch_size=4", "--model-arg", "depth=2"]
TINY = ["--epochs", "1", "--batch-size", "8", "--max-steps-per-epoch", "1", "--no-progress"]


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


@pytest.mark.parametrize("method", ["standard", "mesa"])
def test_timm_vit_trains(tmp_path, method):
    status, out = run("--method", method, *TIMM_VIT, "--out", tmp_path, *TINY)
    assert status == 0 and f"{method} | timm:vit_tiny_patch16_224" in out, out
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("method", ["mesa", "weighted-conv", "large-batch", "kd"])
def test_methods_train_zoo_models(zoo_run, tmp_path, method):
    model, teacher = zoo_run
    args = {"kd": ["--method-arg", f"teacher={teacher}"], "large-batch": ["--method-arg", "ghost_batch_size=4"]}
    status, out = run("--method", method, "--model", model, *ZOO[model], "--out", tmp_path, *TINY,
                      *args.get(method, []))
    assert status == 0 and f"{method} | {model}" in out, out
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def build(cfg: TrainConfig, log=lambda line: None) -> torch.nn.Module:
    """The model of ``cfg`` on digits as ``pyfast train`` builds it, with its ``pretrained`` weights."""
    cfg = cfg.resolved()
    data = load_data("digits", None)
    return build_model(cfg, make_method(cfg, data), data, load_pretrained=True, log=log)


@pytest.mark.parametrize("save", [torch.save, save_file], ids=["pth", "safetensors"])
def test_pretrained_weights_load_what_fits_and_say_what_they_left(tmp_path, save):
    source = MODELS.get("timm:resnet18").builder(5, **TIMM_RESNET)  # the same architecture, for 5 classes
    n = len(source.state_dict())
    state = {k: v.contiguous() for k, v in source.state_dict().items() if k != "conv1.weight"}
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / ("w.safetensors" if save is save_file else "w.pth")
    save(state, str(path))
    lines = []
    loaded = build(TrainConfig(model="timm:resnet18", model_args=TIMM_RESNET, pretrained=str(path)),
                   lines.append).state_dict()
    assert [k for k in state if k in loaded and not torch.equal(loaded[k], state[k])] == ["fc.weight", "fc.bias"]
    assert loaded["fc.weight"].shape == (10, 128)
    (line,) = lines
    assert line == (f"pretrained {path}: loaded {n - 3} of the model's {n} tensors; left as initialised: "
                    "conv1.weight (not in the file), fc.weight (file [5, 128], model [10, 128]), fc.bias (file [5], "
                    "model [10]); unused from the file: extra.weight")


def test_a_pyfast_checkpoint_is_a_pretrained_file(zoo_run):
    model, teacher = zoo_run
    saved = load_checkpoint(teacher / "last.pt")["model"]
    cfg = load_checkpoint(teacher / "last.pt")["config"]
    loaded = build(TrainConfig(model=model, model_args=cfg["model_args"], pretrained=str(teacher / "last.pt")))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
    assert loaded.state_dict().keys() == saved.keys()


def test_pretrained_run_says_what_it_loaded_and_resume_does_not_reload(tmp_path):
    weights = tmp_path / "w.pth"
    state = MODELS.get("timm:resnet18").builder(10, **TIMM_RESNET).state_dict()
    torch.save(state, weights)
    argv = ["--model", "timm:resnet18", "--pretrained", weights, "--out", tmp_path / "run", *ZOO["timm:resnet18"],
            *TINY]
    status, out = run(*argv)
    assert status == 0 and f"pretrained {weights}: loaded {len(state)} of the model's {len(state)} tensors\n" in out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["pretrained"] == str(weights)
    weights.unlink()  # the checkpoint has the weights: resuming must not need the file
    status, out = run(*argv, "--resume")
    assert status == 0 and "loaded" not in out and "nothing to do" in out, out
    assert_fails("pretrained=", *argv[:2], "--pretrained", tmp_path / "other.pth", *argv[4:], "--resume")


def test_pretrained_file_errors_name_the_file_and_where_weights_come_from(tmp_path):
    garbage, foreign, listed = tmp_path / "garbage.pth", tmp_path / "linear.pth", tmp_path / "list.pt"
    garbage.write_bytes(b"not a weights file")
    torch.save(torch.nn.Linear(3, 4).state_dict(), foreign)
    torch.save([1, 2], listed)
    where = "weights are never downloaded"
    resnet = ["--model", "timm:resnet18", *ZOO["timm:resnet18"], "--out", tmp_path / "run"]
    assert_fails(f"pretrained '{tmp_path / 'missing.pth'}': no such file; {where}", *resnet, "--pretrained",
                 tmp_path / "missing.pth")
    assert_fails(f"pretrained {garbage} is unreadable", *resnet, "--pretrained", garbage)
    assert_fails(f"pretrained {tmp_path / 'garbage.safetensors'} is unreadable", *resnet, "--pretrained",
                 shutil.copy(garbage, tmp_path / "garbage.safetensors"))
    out = assert_fails(f"pretrained {foreign}: none of its 2 tensors fits ResNet", *resnet, "--pretrained", foreign)
    assert "a file of another model?" in out and where in out
    assert_fails(f"pretrained {listed} holds no state dict", *resnet, "--pretrained", listed)


def test_list_shows_what_each_method_needs():
    status, out = run("--list")
    assert status == 0
    for entry in METHODS.entries():
        assert f"needs {entry.builder.model_requirement}; default model {entry.builder.default_model}" in out


@pytest.mark.parametrize("method, model, message", [
    ("karat", "timm:resnet18", "needs a pyfast ViT, vit-tiny or vit-small"),
    ("iir-snn", "timm:resnet18", "needs a spiking model with time steps T"),
    ("gcab", "torchvision:mobilenet_v3_small", "needs the gcab-vit model"),
    ("hag-gr", "torchvision:mobilenet_v3_small", "MobileNetV3 has no pyfast.models.vit.Block"),
    ("uskd", "timm:resnet18", "its top-level modules: conv1, bn1, act1, maxpool, layer1"),
    ("lsskd", "torchvision:mobilenet_v3_small", "'layers.1' is not a submodule of MobileNetV3"),
])
def test_a_method_refuses_a_model_it_cannot_train(method, model, message):
    out = assert_fails(message, "--method", method, "--model", model)
    assert f"method {method!r} needs {METHODS.get(method).builder.model_requirement}, got model {model!r}" in out


@pytest.mark.parametrize("method, args, message", [
    ("large-batch", [], "VisionTransformer has no BatchNorm1d/2d layer"),  # it would train without ghost batch norm
    ("weighted-conv", [], "VisionTransformer has no k x k convolution"),  # nothing to weight (patch 4 is even)
    ("lsskd", ["--method-arg", "layers=[blocks.0]"], "layers must name modules with [B, C, H, W] outputs"),
])
def test_a_method_refuses_a_timm_vit_without_what_it_needs(method, args, message):
    out = assert_fails(message, "--method", method, *TIMM_VIT, *args)
    assert f"method {method!r} needs {METHODS.get(method).builder.model_requirement}" in out
