"""Bad input and faults during training: one clear line, exit 2, nothing finished lost or half-written."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from conftest import HELPERS, TRAIN_SCRIPT, run, small_args, write_mcfam

from covid_ddp.commands.train import main as train_main
from covid_ddp.errors import UserError
from covid_ddp.training.checkpoint import complete_checkpoints
from covid_ddp.training.run_folder import RunLock

GOOD_LABELS = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 25]
GOOD_IMAGES = np.random.default_rng(0).integers(0, 256, (100, 64, 64), dtype=np.uint8)


def train_in_process(capsys, data_dir, output_dir, *extra) -> tuple[int, str]:
    code = train_main([str(a) for a in ["--cpu", "--data-dir", data_dir, "--output-dir", output_dir,
                                        "--epochs", "1", "--batch-size", "20", *extra]])
    return code, capsys.readouterr().err


def assert_refused(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _corrupt(path):
    path.write_bytes(path.read_bytes()[:200])


def _not_a_zip(path):
    path.write_text("hello")


@pytest.mark.parametrize("images, labels, damage, fragments", [
    (GOOD_IMAGES, GOOD_LABELS, ("train_images64.npz", _not_a_zip), ["train_images64.npz", "not a readable .npz"]),
    (GOOD_IMAGES, GOOD_LABELS, ("train_labels.npz", _corrupt), ["train_labels.npz", "not a readable .npz"]),
    (GOOD_IMAGES[:, :32, :32], GOOD_LABELS, None, ["train_images64.npz", "says 64x64 but it holds 32x32"]),
    (np.zeros((100, 64, 64, 3), np.uint8), GOOD_LABELS, None, ["train_images64.npz", "(100, 64, 64, 3)"]),
    (np.full((100, 64, 64), np.nan, np.float32), GOOD_LABELS, None, ["must be uint8", "NaN or inf"]),
    (GOOD_IMAGES, GOOD_LABELS[:, :3], None, ["train_labels.npz", "shape (N, 4)"]),
    (GOOD_IMAGES, np.vstack([GOOD_LABELS[:7], np.zeros((1, 4)), GOOD_LABELS[8:]]), None, ["1 label rows", "first bad row: 7"]),
    (GOOD_IMAGES, np.vstack([GOOD_LABELS[:3], [[0.5, 0.5, 0, 0]], GOOD_LABELS[4:]]), None, ["not one-hot", "first bad row: 3"]),
    (GOOD_IMAGES, GOOD_LABELS[:90], None, ["100 images but 90 labels"]),
    (GOOD_IMAGES[:0], GOOD_LABELS[:0], None, ["holds no images"]),
    (GOOD_IMAGES, np.eye(4, dtype=np.float32)[[0] * 100], None, ["100 non-COVID and 0 COVID", "at least 2 of each"]),
])
def test_bad_data_files_are_refused_in_one_line(capsys, tmp_path, images, labels, damage, fragments):
    data = write_mcfam(tmp_path / "data", images, labels)
    if damage:
        name, spoil = damage
        spoil(data / name)
    code, err = train_in_process(capsys, data, tmp_path / "run")
    assert_refused(code, err, *fragments)
    assert not (tmp_path / "run").exists(), "nothing is left behind"


def test_a_missing_key_lists_the_keys_found(capsys, tmp_path):
    data = write_mcfam(tmp_path / "data", GOOD_IMAGES, GOOD_LABELS)
    np.savez(data / "train_labels.npz", labels=GOOD_LABELS, extra=GOOD_LABELS)
    code, err = train_in_process(capsys, data, tmp_path / "run")
    assert_refused(code, err, "train_labels.npz", "no array named 'train_labels' (found: labels, extra)")


def test_a_pickled_object_array_is_refused(capsys, tmp_path):
    data = write_mcfam(tmp_path / "data", GOOD_IMAGES, GOOD_LABELS)
    np.savez(data / "train_images64.npz", train_images=np.array([{"a": 1}] * 100, dtype=object))
    code, err = train_in_process(capsys, data, tmp_path / "run")
    assert_refused(code, err, "train_images64.npz", "pickled data is refused")


def test_a_resume_path_without_a_checkpoint_is_refused(capsys, small_data, tmp_path):
    (tmp_path / "nothing").mkdir()
    code, err = train_in_process(capsys, small_data, tmp_path / "run", "--resume", tmp_path / "nothing")
    assert_refused(code, err, "--resume", "not a checkpoint folder")
    code, err = train_in_process(capsys, small_data, tmp_path / "empty_run", "--resume", "latest")
    assert_refused(code, err, "--resume latest: no complete checkpoint")
    assert not (tmp_path / "run").exists() and not (tmp_path / "empty_run").exists()


def test_a_second_run_on_a_busy_output_dir_refuses(capsys, small_data, tmp_path):
    busy = RunLock(tmp_path / "run")
    busy.acquire()  # another run holds the folder (flock works across processes alike)
    try:
        code, err = train_in_process(capsys, small_data, tmp_path / "run")
        assert_refused(code, err, "in use by another covid_ddp run")
    finally:
        busy.release()


def test_a_non_finite_loss_stops_before_saving(small_data, tmp_path):
    """Six steps an epoch (252 images / 40): the 9th loss is epoch 2, step 3."""
    result = run([sys.executable, HELPERS / "faulty_train.py", "nan:9", *small_args(small_data, tmp_path / "run")],
                 check=False)
    assert result.returncode == 2
    assert "NaN or infinite at epoch 2, step 3" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["epoch_001"]
    assert not (tmp_path / "run" / "COVID_binary_classifier.pth").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = run([sys.executable, TRAIN_SCRIPT, *small_args(small_data, tmp_path / "run", "--resume", "latest")])
    assert "Resumed from" in resumed.stdout, "the last good checkpoint is intact"


def test_a_local_copy_that_differs_from_its_pin_is_refused(capsys, small_data, tmp_path):
    code, err = train_in_process(capsys, small_data, tmp_path / "run", "--sha256-labels", "ab" * 32)
    assert_refused(code, err, "train_labels.npz: sha256 is", "not the pinned abab")
    assert not (tmp_path / "run").exists()


def test_fewer_evaluation_images_than_processes_is_refused():
    from covid_ddp.data.splits import Split
    from covid_ddp.training.config import TrainConfig
    from covid_ddp.training.preparation import make_loaders

    images, targets = torch.zeros((20, 64, 64), dtype=torch.uint8), torch.zeros(20, dtype=torch.int64)
    split = Split(np.arange(16), np.arange(16, 17), np.arange(17, 20))
    with pytest.raises(UserError, match="the validation part has 1 images, fewer than the 2 processes"):
        make_loaders(images, targets, split, TrainConfig(batch_size=4, eval_batch_size=4), num_processes=2,
                     process_index=0, on_device=True)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_get_the_umasks_mode(tmp_path, umask, mode):
    """Weights, JSON and figures go through files.atomic_path: readable as the umask says, like
    any tool's output (mkstemp alone would make them 0600)."""
    from covid_ddp.files import save_torch, write_json

    previous = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        save_torch(tmp_path / "w.pth", {"x": torch.zeros(1)})
    finally:
        os.umask(previous)
    for name in ("metrics.json", "w.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_data_dir_of_other_files_is_named_and_nothing_is_downloaded_into_it(capsys, tmp_path):
    """A folder of PNGs given as --data-dir: say what it lacks and how to make it; never fill a
    folder of the user's files with a download (the URL here would refuse anyway)."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"\x89PNG")
    code, err = train_in_process(capsys, folder, tmp_path / "run", "--mcfam-url", "http://127.0.0.1:9/")
    assert_refused(code, err, "holds no train_images64.npz and train_labels.npz but 2 other file(s) (a.png, b.png)",
                   "covid-ddp-prepare --output-dir DIR SRC")
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png"]


def test_a_data_dir_with_the_two_files_and_others_is_used_as_it_is(small_data, tmp_path):
    """Other files beside the two (a README, meta.npz) are fine: it is the user's data folder."""
    folder = write_mcfam(tmp_path / "data", GOOD_IMAGES, GOOD_LABELS)
    (folder / "README.md").write_text("my X-rays")
    assert train_main(["--data-dir", str(folder), "--output-dir", str(tmp_path / "run"), "--epochs", "1",
                       "--batch-size", "20", "--mcfam-url", "http://127.0.0.1:9/", "--bootstrap", "0"]) == 0


@pytest.mark.parametrize("flags, fragment", [
    (["--batch-size", "100000"], "--batch-size"),
    (["--val-size", "0.99"], "training part"),
    (["--image-size", "32"], "--image-size"),
])
def test_a_refusal_once_the_data_is_read_comes_before_the_run_folder_is_touched(capsys, small_data, tmp_path, flags,
                                                                               fragment):
    """These need the data, the split or the model: all are settled before the run folder is
    claimed. A new folder is never made, a folder of the user's is left as it was, and a
    finished run is not cleared by --overwrite for a run that is then refused."""
    code, err = train_in_process(capsys, small_data, tmp_path / "new", *flags)
    assert_refused(code, err, fragment)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    code, err = train_in_process(capsys, small_data, tmp_path / "mine", *flags)
    assert_refused(code, err, fragment)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    finished = tmp_path / "finished"
    assert train_in_process(capsys, small_data, finished)[0] == 0
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    code, err = train_in_process(capsys, small_data, finished, "--overwrite", *flags)
    assert_refused(code, err, fragment)
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before


def test_a_process_that_lost_a_peer_says_so_and_how_to_resume(tmp_path):
    """What a rank left waiting in a collective tells (Session.start turns the collective's error into it)."""
    from covid_ddp.training.distributed import JobFailed
    from covid_ddp.training.session import Session

    session = Session(accelerator=None, config=None)
    session.run_dir = tmp_path / "run"
    told = session._peer_lost(RuntimeError("Connection closed by peer [127.0.0.1]:29500\ndetails"))
    assert isinstance(told, JobFailed)
    assert str(told) == (f"another process of this job ended while this one waited for it (Connection closed by peer "
                         f"[127.0.0.1]:29500); its own output says why. Complete checkpoints are kept: rerun with "
                         f"--resume auto --output-dir {tmp_path / 'run'}")
