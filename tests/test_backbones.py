"""Standard backbones (--model resnet18, ...): one channel, raw pixels, local initial weights, and
every command working on their weights. Small images (32-40 px) keep them quick.

torchvision's wheels on this project's machines import only beside their own CUDA build of torch;
where it does not import, this file is skipped as a whole (``.ci/run`` runs it in its floor
environment: torch 2.2.2, torchvision 0.17.2, timm 0.9.16).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

try:
    import torchvision
except (ImportError, RuntimeError) as error:  # RuntimeError: beside a torch it was not built for
    pytest.skip(f"torchvision does not import here ({str(error).splitlines()[0]}); pip install the pair: torch==2.14.1 torchvision==0.29.1",
                allow_module_level=True)

from conftest import PREDICT_SCRIPT, ROOT, run, torchrun

from covid_ddp.errors import UserError
from covid_ddp.evaluation.audit import predict_with_features
from covid_ddp.models.backbones import TORCHVISION, load_initial_weights
from covid_ddp.models.gradcam import gradcam
from covid_ddp.models.inference import predict
from covid_ddp.models.loading import load_model
from covid_ddp.models.net import build_network
from covid_ddp.models.spec import ModelSpec

SIZE = 40


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_each_backbone_reads_one_channel_of_raw_pixels(name):
    torch.manual_seed(0)
    model = build_network(ModelSpec(name, 32)).eval()
    model.set_normalization(120.0, 60.0)
    stem = model.network.get_submodule(TORCHVISION[name].first_conv)
    assert stem.in_channels == 1
    images = torch.randint(0, 256, (2, 1, 32, 32)).float()
    with torch.no_grad():
        log_p = model(images)
        expected = torch.log_softmax(model.network((images - 120.0) / 60.0), dim=1)
    assert log_p.shape == (2, 2) and torch.allclose(log_p.exp().sum(dim=1), torch.ones(2))
    assert torch.allclose(log_p, expected), "the normalisation is inside the model: raw pixels in"
    heatmaps = gradcam(model, images)
    assert heatmaps.shape == (2, 32, 32) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    p_covid, features = predict_with_features(model, images.numpy())
    assert np.allclose(p_covid, log_p[:, 1].exp().numpy(), atol=1e-5) and features.shape[0] == 2
    assert {"pixel_mean", "pixel_std"} <= set(model.state_dict()), "the weights file carries its normalisation"


def test_initial_weights_sum_the_rgb_stem_and_leave_the_head_out(tmp_path):
    imagenet_like = torchvision.models.resnet18(weights=None)  # 3 channels, 1000 classes: what users download
    torch.save(imagenet_like.state_dict(), tmp_path / "resnet18.pth")
    model = build_network(ModelSpec("resnet18", SIZE))
    head_before = model.network.fc.weight.clone()
    done = load_initial_weights(model, torch.load(tmp_path / "resnet18.pth", weights_only=True), "resnet18.pth")
    assert done["first_conv_summed_from_3_channels"] and done["head_replaced"] == "fc"
    assert torch.equal(model.network.conv1.weight, imagenet_like.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.network.layer4[1].bn2.running_var, imagenet_like.layer4[1].bn2.running_var)
    assert torch.equal(model.network.fc.weight, head_before), "our two-class head is not overwritten"


def test_initial_weights_read_a_safetensors_file_as_a_pth(tmp_path):
    """A timm or Hub checkpoint ships as .safetensors: --init-weights reads it like a .pth (no pickle)."""
    from safetensors.torch import save_file

    from covid_ddp.files import load_plain

    imagenet_like = torchvision.models.resnet18(weights=None)
    save_file(imagenet_like.state_dict(), str(tmp_path / "resnet18.safetensors"))
    model = build_network(ModelSpec("resnet18", SIZE))
    done = load_initial_weights(model, load_plain(tmp_path / "resnet18.safetensors", "--init-weights file"), "x")
    assert done["first_conv_summed_from_3_channels"]
    assert torch.equal(model.network.layer4[1].bn2.running_var, imagenet_like.layer4[1].bn2.running_var)


def test_initial_weights_read_torchvision_densenet_files_and_checkpoints_wrapping_them(tmp_path):
    reference = torchvision.models.densenet121(weights=None)
    # torchvision's published DenseNet files name layers "norm.1" (its own loader renames them), and
    # a training checkpoint wraps the state_dict under "state_dict" with DataParallel's "module.".
    old_names = {key.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): value
                 for key, value in reference.state_dict().items()}
    assert old_names.keys() != reference.state_dict().keys()
    model = build_network(ModelSpec("densenet121", 32))
    load_initial_weights(model, {"state_dict": {f"module.{k}": v for k, v in old_names.items()}, "epoch": 3}, "x.pth")
    assert torch.equal(model.network.features.denseblock4.denselayer16.conv2.weight,
                       reference.features.denseblock4.denselayer16.conv2.weight)


def test_initial_weights_of_another_network_are_named_in_one_line():
    model = build_network(ModelSpec("resnet18", SIZE))
    other = torchvision.models.efficientnet_b0(weights=None).state_dict()
    with pytest.raises(UserError) as raised:
        load_initial_weights(model, other, "effnet.pth")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("--init-weights effnet.pth: does not fit ResNet: missing: ")
    assert "unexpected: classifier.1.bias, classifier.1.weight, features.0.0.weight and 357 more" in message
    with pytest.raises(UserError, match="not a state_dict"):
        load_initial_weights(model, {"epoch": 3}, "x.pth")


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory):
    """A 2-process resnet18 run on 40 px synthetic images, from initial weights on disk."""
    folder = tmp_path_factory.mktemp("backbone")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), folder / "init.pth")
    args = ["--dataset", "synthetic", "--synthetic-size", "320", "--image-size", str(SIZE), "--model", "resnet18",
            "--init-weights", folder / "init.pth", "--epochs", "1", "--batch-size", "32", "--log-images-every", "1",
            "--audit", "yes", "--output-dir", folder / "run"]
    job = torchrun(2, ROOT / "launch" / "train.py", args, timeout=300)
    (folder / "console.txt").write_text(job.stdout + job.stderr)
    return folder / "run"


def test_initial_weights_are_reported_once_with_what_was_adapted(backbone_run):
    console = (backbone_run.parent / "console.txt").read_text()
    lines = [line for line in console.splitlines() if line.startswith("--init-weights ")]
    # 2 processes, one line (the main rank's): torchvision's RGB stem was summed, its fc replaced.
    assert len(lines) == 1, console[-3000:]
    assert "tensors loaded, its first convolution summed from 3 channels to 1; a new two-class head (fc)" in lines[0]


def test_a_backbone_run_ships_one_plain_state_dict_with_a_sidecar_naming_it(backbone_run):
    weights = backbone_run / "COVID_binary_classifier.pth"
    state_dict = torch.load(weights, weights_only=True, map_location="cpu")
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in state_dict)
    assert all(v.dtype == torch.float32 for v in state_dict.values() if v.is_floating_point())
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["model"] == {"name": "resnet18", "image_size": SIZE}
    config = json.loads((backbone_run / "config.json").read_text())
    assert config["model"]["name"] == "resnet18" and config["config"]["init_weights"].endswith("init.pth")
    # The consolidated weights score the test split exactly as the run did.
    evaluated = run([sys.executable, ROOT / "launch" / "evaluate.py", "--weights", weights, "--bootstrap", "0"])
    evaluation = json.loads((backbone_run / "evaluation-test" / "evaluation.json").read_text())
    metrics = json.loads((backbone_run / "metrics.json").read_text())["test"]
    assert evaluation["metrics"]["roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-6), evaluated.stderr
    assert "resnet18" in (backbone_run / "model_card.md").read_text()


def test_predict_resizes_to_the_weights_size_and_draws_gradcam(backbone_run, tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 90), dtype=np.uint8)).save(tmp_path / "film.png")
    weights = backbone_run / "COVID_binary_classifier.pth"
    result = run([sys.executable, PREDICT_SCRIPT, "--weights", weights, tmp_path / "film.png",
                  "--gradcam", tmp_path / "cams"])
    assert f"resized to {SIZE}x{SIZE}, the weights' size (from 90x120" in result.stderr
    assert (tmp_path / "cams" / "film_0.png").is_file()
    p_csv = float(result.stdout.splitlines()[1].split(",")[2])
    from covid_ddp.data.radiographs import read_radiograph

    expected = predict(load_model(weights), read_radiograph(tmp_path / "film.png", SIZE)[None])[0]
    assert p_csv == pytest.approx(float(expected), abs=1e-5)


def test_backbone_weights_without_their_sidecar_are_refused_in_one_line(backbone_run, tmp_path):
    alone = tmp_path / "COVID_binary_classifier.pth"
    alone.write_bytes((backbone_run / "COVID_binary_classifier.pth").read_bytes())
    with pytest.raises(UserError) as raised:
        load_model(alone)
    assert "not weights of the original script's Net (no COVID_binary_classifier.json beside it" in str(raised.value)


def test_backbone_runs_are_audited_and_exported(backbone_run, tmp_path):
    report = json.loads((backbone_run / "audit-test" / "audit.json").read_text())  # --audit yes: Grad-CAM's layer
    assert report["gradcam"]["images"] > 0 and report["marks"]["images"] > 0
    weights = backbone_run / "COVID_binary_classifier.pth"
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run([sys.executable, ROOT / "launch" / "export.py", "--weights", weights, "--onnx", tmp_path / "m.onnx"])
    pixels = np.random.default_rng(1).integers(0, 256, (3, 1, SIZE, SIZE)).astype(np.float32)
    onnx_p = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"pixels": pixels})[0]
    with torch.no_grad():
        torch_p = load_model(weights)(torch.from_numpy(pixels)).exp().numpy()
    assert np.abs(onnx_p - torch_p).max() < 1e-4


def test_initial_weights_holding_pickled_objects_are_refused_before_training(tmp_path):
    torch.save({"weights": torchvision.models.resnet18(weights=None)}, tmp_path / "module.pth")  # a whole module
    result = run([sys.executable, ROOT / "launch" / "train.py", "--dataset", "synthetic", "--synthetic-size", "100",
                  "--model", "resnet18", "--init-weights", tmp_path / "module.pth", "--output-dir", tmp_path / "run"],
                 check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"{tmp_path / 'module.pth'}: refused: this --init-weights file holds pickled Python objects" in line, line
    assert not (tmp_path / "run" / "COVID_binary_classifier.pth").exists()


def test_timm_models_are_built_the_same_way():
    pytest.importorskip("timm")
    model = build_network(ModelSpec("timm:resnet10t", 32)).eval()
    images = torch.randint(0, 256, (2, 1, 32, 32)).float()
    assert model(images).shape == (2, 2)
    assert gradcam(model, images).shape == (2, 32, 32)


def test_sync_bn_keeps_a_timm_models_activations_so_the_network_trained_is_the_one_shipped():
    """timm's BatchNormAct2d applies its activation itself: torch's converter would drop it."""
    pytest.importorskip("timm")
    import copy

    from timm.layers import BatchNormAct2d

    from covid_ddp.models.sync_batchnorm import convert_sync_batchnorm

    torch.manual_seed(0)
    shipped = build_network(ModelSpec("timm:mobilenetv3_small_050", 32))
    assert any(type(module) is BatchNormAct2d for module in shipped.modules())
    images = torch.rand(4, 1, 32, 32) * 255
    for device, modes in (("cpu", ("train", "eval")), ("cuda", ("eval",))):  # (CUDA: timm's converter, run on CPU)
        trained = convert_sync_batchnorm(copy.deepcopy(shipped), torch.device(device))
        assert not any(type(module) is BatchNormAct2d for module in trained.modules()), device
        for mode in modes:
            outputs = []
            for network in (shipped, trained):
                getattr(network, mode)()
                torch.manual_seed(1)  # the same dropout draws
                outputs.append(network(images))
            torch.testing.assert_close(outputs[1], outputs[0], msg=f"{device}, {mode}")
        fresh = build_network(ModelSpec("timm:mobilenetv3_small_050", 32))
        fresh.load_state_dict(trained.state_dict())  # strict: the trained network's weights ship as they are


def test_a_timm_checkpoint_in_safetensors_starts_a_timm_model(tmp_path):
    """timm's checkpoints (the Hub's model.safetensors): three channels and 1000 classes, read
    without a pickle, the stem summed to one channel, the head left out."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from covid_ddp.files import load_plain

    imagenet_like = timm.create_model("resnet10t", pretrained=False)
    save_file(imagenet_like.state_dict(), str(tmp_path / "model.safetensors"))
    model = build_network(ModelSpec("timm:resnet10t", 32))
    done = load_initial_weights(model, load_plain(tmp_path / "model.safetensors", "--init-weights file"), "x")
    stem = model.layout.first_conv + ".weight"
    assert done["first_conv_summed_from_3_channels"] and done["head_replaced"] == "fc"
    assert torch.equal(model.network.state_dict()[stem], imagenet_like.state_dict()[stem].sum(dim=1, keepdim=True))


@pytest.fixture(scope="module")
def xrv_densenet(tmp_path_factory):
    """torchxrayvision's DenseNet121 built offline (weights=None), with the per-pathology operating
    points its published models carry, saved as a state_dict the way docs/models.md says."""
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(0)
    reference = xrv.models.DenseNet(weights=None).eval()
    reference.op_threshs = torch.rand(len(reference.classifier.weight))  # a buffer: in its state_dict
    path = tmp_path_factory.mktemp("xrv") / "xrv-densenet121.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_torchxrayvision_weights_see_their_own_pixel_scale(xrv_densenet):
    """--input-scale xrv: raw pixels reach the network as torchxrayvision's [-1024, 1024], so the
    loaded features are the xrv model's own on the same radiographs."""
    from covid_ddp.models.spec import ModelSpec as Spec

    reference, path = xrv_densenet
    spec = Spec("densenet121", 64, "xrv")
    model = build_network(spec).eval()
    done = load_initial_weights(model, torch.load(path, weights_only=True), path)
    model.set_normalization(*spec.fixed_normalization())
    assert not done["first_conv_summed_from_3_channels"], "xrv's stem already takes one channel"
    pixels = torch.randint(0, 256, (2, 1, 64, 64)).float()
    with torch.no_grad():
        ours = model.network.features((pixels - model.pixel_mean) / model.pixel_std)
        theirs = reference.features((2 * pixels / 255 - 1) * 1024)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_a_run_from_torchxrayvision_weights_records_their_scale_and_every_command_applies_it(xrv_densenet, tmp_path):
    _, path = xrv_densenet
    run_dir = tmp_path / "run"
    run([sys.executable, ROOT / "launch" / "train.py", "--dataset", "synthetic", "--synthetic-size", "200",
         "--image-size", "32", "--model", "densenet121", "--init-weights", path, "--input-scale", "xrv",
         "--epochs", "1", "--batch-size", "20", "--log-images-every", "0", "--audit", "no", "--bootstrap", "0",
         "--output-dir", run_dir], timeout=300)
    weights = run_dir / "COVID_binary_classifier.pth"
    assert json.loads(weights.with_suffix(".json").read_text())["model"] == {
        "name": "densenet121", "image_size": 32, "input_scale": "xrv"}
    shipped = torch.load(weights, weights_only=True)
    assert shipped["pixel_mean"].item() == 127.5 and shipped["pixel_std"].item() == pytest.approx(255 / 2048)
    model = load_model(weights, device="cpu")
    assert model.spec.input_scale == "xrv" and model.pixel_mean.item() == 127.5
    assert "pixels scaled to [-1024, 1024]" in (run_dir / "model_card.md").read_text()
    with pytest.raises(UserError, match="--input-scale xrv is for a backbone"):
        from covid_ddp.training.config import parse_config

        parse_config(["--input-scale", "xrv"])
