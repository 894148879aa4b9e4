"""Images of any size and the memory-mapped store: prepare, load, train, predict at the data's size.

No torchvision needed: the seed's Net trains at any size of 38 px or more.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import PREDICT_SCRIPT, TRAIN_SCRIPT, run, write_mcfam
from PIL import Image

from covid_ddp.commands.prepare import main as prepare_main
from covid_ddp.data.duplicates import find_duplicates
from covid_ddp.data.folders import load_data_dir, load_data_dirs
from covid_ddp.data.format import IMAGE_SIZE
from covid_ddp.data.image_rows import write_store
from covid_ddp.data.sets import load_dataset
from covid_ddp.data.synthetic import make_synthetic
from covid_ddp.data.tensors import dataset_tensors
from covid_ddp.errors import UserError
from covid_ddp.models.net import Net, build_network
from covid_ddp.models.spec import ModelSpec

LABELS = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 3]


def pictures(folder, rng=np.random.default_rng(5)):
    for name in ("normal", "covid"):
        (folder / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(rng.integers(0, 256, (150, 120), dtype=np.uint8)).save(folder / name / f"{index}.png")
    return folder


def test_net_is_the_seed_at_64_and_sizes_itself_to_other_images():
    torch.manual_seed(3)
    seed_net = Net()
    torch.manual_seed(3)
    built = build_network(ModelSpec())
    assert built.spec == ModelSpec("net", IMAGE_SIZE)
    assert all(torch.equal(a, b) for a, b in zip(seed_net.state_dict().values(), built.state_dict().values()))
    assert seed_net.fc1.in_features == 256 * 2 * 2
    assert Net(image_size=96).fc1.in_features == 256 * 4 * 4  # 96 -> 94 -> 47 -> 45 -> 22 -> 20 -> 10 -> 8 -> 4
    with pytest.raises(UserError, match="Net needs images of 38x38 or more, got 30x30"):
        Net(image_size=30)


def test_prepare_writes_the_size_asked_as_a_store_that_training_maps(tmp_path, capsys):
    source = pictures(tmp_path / "films")
    assert prepare_main(["--output-dir", str(tmp_path / "small"), "--workers", "1", str(source)]) == 0
    assert prepare_main(["--output-dir", str(tmp_path / "big"), "--workers", "1", "--image-size", "96",
                         "--format", "store", str(source)]) == 0
    out = capsys.readouterr().out
    assert "train_images96.npy at 96x96" in out
    assert sorted(p.name for p in (tmp_path / "small").glob("train_images*")) == ["train_images64.npz"]
    assert sorted(p.name for p in (tmp_path / "big").glob("train_images*")) == ["train_images96.npy"]
    data = load_data_dir(tmp_path / "big")
    assert isinstance(data.images, np.memmap) and data.images.shape == (6, 96, 96) and data.image_size == 96
    assert data.provenance["store"] and data.provenance["image_size"] == 96
    assert json.loads((tmp_path / "big" / "prepare.json").read_text())["images_file"] == "train_images96.npy"


# A process of a multi-process CPU job gets accelerate's device cpu:0, and .to("cpu:0") copies.
@pytest.mark.parametrize("device", [torch.device("cpu"), torch.device("cpu", 0)], ids=["1 process", "a rank"])
def test_a_mapped_store_is_shared_not_copied(tmp_path, device):
    images, labels = make_synthetic(40, seed=1)
    write_store(tmp_path / "train_images64.npy", images)
    np.savez(tmp_path / "train_labels.npz", train_labels=labels)
    data = load_dataset("mcfam", [tmp_path], 0, 0, "http://unused/")
    assert isinstance(data.images, np.memmap) and not data.images.flags.writeable
    tensor, _ = dataset_tensors(data.images, np.zeros(40, dtype=np.int64), device, on_device=True)
    assert tensor.data_ptr() == data.images.ctypes.data, "the training tensor must be the mapping, not a copy"
    assert np.array_equal(tensor.numpy(), images)


def test_a_folder_of_several_sizes_needs_one_chosen(tmp_path):
    write_mcfam(tmp_path / "both", np.zeros((12, 64, 64), np.uint8), LABELS)
    write_store(tmp_path / "both" / "train_images96.npy", np.zeros((12, 96, 96), np.uint8))
    with pytest.raises(UserError, match=r"holds images of several sizes \(train_images64.npz, train_images96.npy\); "
                                        "choose one with --image-size"):
        load_data_dir(tmp_path / "both")
    assert load_data_dir(tmp_path / "both", image_size=96).image_size == 96
    with pytest.raises(UserError, match="holds no 128x128 images .* covid-ddp-prepare --image-size 128"):
        load_data_dir(tmp_path / "both", image_size=128)
    write_mcfam(tmp_path / "other", np.zeros((12, 64, 64), np.uint8), LABELS)
    with pytest.raises(UserError, match="other holds no 96x96 images"):
        load_data_dirs([tmp_path / "both", tmp_path / "other"], image_size=96)
    (tmp_path / "big").mkdir()
    write_store(tmp_path / "big" / "train_images96.npy", np.zeros((12, 96, 96), np.uint8))
    np.savez(tmp_path / "big" / "train_labels.npz", train_labels=LABELS)
    with pytest.raises(UserError, match="the folders hold images of different sizes .*big 96x96, other 64x64"):
        load_data_dirs([tmp_path / "big", tmp_path / "other"])


def test_synthetic_films_at_another_size_are_the_same_kind_of_films():
    small, _ = make_synthetic(30, seed=4)
    large, labels = make_synthetic(30, seed=4, image_size=128)
    assert large.shape == (30, 128, 128) and large.dtype == np.uint8 and (labels.sum(axis=1) == 1).all()
    # The same anatomy drawn (one chunk of 30 at either size): only the noise differs.
    shrunk = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(large).float().unsqueeze(1), 64)[:, 0].numpy()
    correlation = np.corrcoef(shrunk.reshape(30, -1).ravel(), small.reshape(30, -1).astype(float).ravel())[0, 1]
    assert correlation > 0.9, correlation


def test_duplicates_of_large_images_are_found_at_64():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 128, 128), dtype=np.uint8)
    images[3] = images[0]  # an exact copy
    images[4] = np.clip(images[1].astype(int) + 3, 0, 255)  # a brighter re-encoding: near
    pairs = {(p.first, p.second, p.exact) for p in find_duplicates(images)}
    assert pairs == {(0, 3, True), (1, 4, False)}


def test_net_trains_at_the_data_size_and_predict_resizes_to_it(tmp_path):
    run([sys.executable, TRAIN_SCRIPT, "--dataset", "synthetic", "--synthetic-size", "300", "--image-size", "48",
         "--epochs", "1", "--log-images-every", "0", "--bootstrap", "0", "--audit", "no", "--output-dir", tmp_path / "run"])
    weights = tmp_path / "run" / "COVID_binary_classifier.pth"
    assert json.loads(weights.with_suffix(".json").read_text())["model"] == {"name": "net", "image_size": 48}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["image_size"] == 48
    film = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)  # one gradient film (a blank one is refused)
    Image.fromarray(film).save(tmp_path / "x.png")
    np.savez(tmp_path / "x.npz", train_images=np.stack([film, film]))
    result = run([sys.executable, PREDICT_SCRIPT, "--weights", weights, tmp_path / "x.png", tmp_path / "x.npz"])
    assert "3 images were resized to 48x48, the weights' size (from 64x64)" in result.stderr
    rows = result.stdout.splitlines()[1:]
    assert len(rows) == 3 and len({row.split(",")[2] for row in rows}) == 1, "the same film, the same score"


def test_backbone_choices_and_a_missing_torchvision_are_one_line_errors(monkeypatch):
    from covid_ddp.models.backbones import build_backbone
    from covid_ddp.training.config import parse_config

    with pytest.raises(UserError, match="--model vgg16: unknown; use one of net, resnet18, resnet50, densenet121, "
                                        "efficientnet_b0, or timm:NAME"):
        parse_config(["--model", "vgg16"])
    with pytest.raises(UserError, match="--init-weights starts a backbone"):
        parse_config(["--init-weights", "x.pth"])
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(UserError, match=r"the backbones need torchvision, which does not import here .*"
                                        r"pip install torch==2.14.1 torchvision==0.29.1"):
        build_backbone("resnet18")
