"""The real download code against a local HTTP server on 127.0.0.1 (never the real URL)."""

from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np
import pytest
from conftest import IMAGES, LABELS, SMALL_RUN, TRAIN_SCRIPT, FakeMirror, clean_env, npz_bytes, run, torchrun

from covid_ddp.data.download import DownloadError, download
from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import sha256_of
from covid_ddp.data.mcfam import fetch_mcfam
from covid_ddp.data.sets import fetch_dataset
from covid_ddp.errors import UserError


@pytest.fixture
def mirror():
    server = FakeMirror()
    yield server
    server.close()


def test_download_fills_the_cache_once(mirror, tmp_path):
    fetch_mcfam(tmp_path, mirror.url)
    assert load_data_dir(tmp_path).images.shape == (8, 64, 64)
    fetch_mcfam(tmp_path, mirror.url)
    assert mirror.requests == ["train_images64.npz", "train_labels.npz"], "cached files are not fetched again"


def test_download_retries_after_a_server_error(mirror, tmp_path):
    mirror.failures["train_images64.npz"] = 1
    fetch_mcfam(tmp_path, mirror.url)
    assert mirror.requests.count("train_images64.npz") == 2
    assert (tmp_path / "train_images64.npz").read_bytes() == IMAGES


def test_http_404_fails_fast_with_a_way_forward_and_leaves_no_file(mirror, tmp_path):
    del mirror.files["train_labels.npz"]
    with pytest.raises(UserError) as error:
        fetch_mcfam(tmp_path, mirror.url)
    message = str(error.value)
    assert "HTTP 404" in message and "train_labels.npz" in message
    assert "--data-dir" in message and "--dataset synthetic" in message
    assert mirror.requests.count("train_labels.npz") == 1, "a missing file is not asked for again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_images64.npz", "train_images64.npz.sha256"], \
        "no partial file is left"


@pytest.mark.parametrize("damage", ["truncated", "invalid"])
def test_a_bad_transfer_is_never_cached(mirror, tmp_path, damage):
    if damage == "truncated":
        mirror.truncate.add("train_images64.npz")
    else:
        mirror.files["train_images64.npz"] = npz_bytes(train_images=np.zeros((8, 32, 32), np.uint8))
    with pytest.raises(UserError, match="train_images64.npz"):
        fetch_mcfam(tmp_path, mirror.url)
    assert mirror.requests.count("train_images64.npz") == 3, "retried"
    assert list(tmp_path.iterdir()) == [], "nothing invalid or partial in the cache"


def test_train_without_network_exits_within_a_minute_with_one_line(mirror, tmp_path):
    url = mirror.url
    mirror.close()  # nothing listens there any more: connection refused, as offline
    started = time.monotonic()
    result = run([sys.executable, TRAIN_SCRIPT, "--cpu", "--mcfam-url", url, "--output-dir", tmp_path / "run"],
                 check=False, timeout=60, env=clean_env(XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert time.monotonic() - started < 60
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "could not download" in lines[0] and "--dataset synthetic" in lines[0]
    assert not (tmp_path / "run").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "nothing partial in the cache"


def test_a_stalled_server_times_out(mirror, tmp_path):
    mirror.stall_s = 3
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download(mirror.url + "train_labels.npz", tmp_path / "labels.npz", retries=2, timeout_s=0.5, backoff_s=0)
    assert time.monotonic() - started < 2.5
    assert list(tmp_path.iterdir()) == []


def test_a_cached_file_that_changed_is_fetched_again(mirror, tmp_path, capsys):
    fetch_mcfam(tmp_path, mirror.url)
    (tmp_path / "train_labels.npz").write_bytes(npz_bytes(train_labels=np.eye(4, dtype=np.float32)[[3, 2, 1, 0] * 2]))
    fetch_mcfam(tmp_path, mirror.url)
    assert mirror.requests.count("train_labels.npz") == 2
    assert (tmp_path / "train_labels.npz").read_bytes() == LABELS
    assert "no longer matches the sha256 recorded" in capsys.readouterr().err


def test_a_changed_cached_file_is_refused_when_offline(mirror, tmp_path):
    fetch_mcfam(tmp_path, mirror.url)
    (tmp_path / "train_images64.npz").write_bytes(npz_bytes(train_images=np.ones((8, 64, 64), np.uint8)))
    url = mirror.url
    mirror.close()
    with pytest.raises(UserError, match="no longer matches the sha256 recorded when it was downloaded"):
        fetch_mcfam(tmp_path, url, timeout_s=1)


def test_pinned_hashes_refuse_other_content(mirror, tmp_path):
    wrong = {"train_images64.npz": "0" * 64}
    with pytest.raises(UserError, match="is not the pinned 0000"):
        fetch_mcfam(tmp_path / "a", mirror.url, pins=wrong)
    assert not (tmp_path / "a" / "train_images64.npz").exists()
    right = {"train_images64.npz": sha256_of_bytes(IMAGES), "train_labels.npz": sha256_of_bytes(LABELS)}
    fetch_mcfam(tmp_path / "b", mirror.url, pins=right)
    assert sha256_of(tmp_path / "b" / "train_labels.npz") == right["train_labels.npz"]


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a user's --data-dir is never a download target ------------------------------------------


def test_a_data_dir_that_does_not_exist_is_refused_and_not_created(mirror, capsys, tmp_path):
    from covid_ddp.commands.train import main as train_main

    typo = tmp_path / "data" / "mnie"  # for data/mine
    code = train_main(["--data-dir", str(typo), "--mcfam-url", mirror.url, "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{typo} does not exist (nothing was created there)" in err and "--download" in err
    assert not typo.exists() and mirror.requests == [], "never a download target"


@pytest.mark.parametrize("holds", ["images only", "both arrays in one file"])
def test_a_data_dir_missing_a_file_names_it_and_downloads_nothing(mirror, tmp_path, holds):
    folder = tmp_path / "mine"
    folder.mkdir()
    arrays = {"train_images": np.zeros((8, 64, 64), np.uint8)}
    if holds == "both arrays in one file":
        arrays["train_labels"] = np.eye(4)[[0, 1, 2, 3] * 2]
    np.savez(folder / "train_images64.npz", **arrays)
    fetch_dataset("mcfam", [folder], mirror.url)
    with pytest.raises(UserError) as refused:
        load_data_dir(folder)
    message = str(refused.value)
    assert message.startswith(f"{folder / 'train_labels.npz'} is missing (beside train_images64.npz)")
    if holds == "both arrays in one file":
        assert "holds both 'train_images' and 'train_labels': save 'train_labels' in train_labels.npz" in message
    assert mirror.requests == [] and sorted(p.name for p in folder.iterdir()) == ["train_images64.npz"]


def test_download_fills_a_data_dir_only_when_asked(mirror, tmp_path):
    fetch_dataset("mcfam", [tmp_path / "new"], mirror.url)
    assert not (tmp_path / "new").exists()
    fetch_dataset("mcfam", [tmp_path / "new"], mirror.url, into_data_dir=True)
    assert load_data_dir(tmp_path / "new").images.shape == (8, 64, 64)


def test_the_other_processes_wait_for_a_download_slower_than_the_collective_timeout(small_data, tmp_path):
    """A first download that takes longer than --dist-timeout: the job goes on when it is done
    (it used to fail: the other processes waited for it inside a collective)."""
    server = FakeMirror()
    server.files = {name: (small_data / name).read_bytes() for name in ("train_images64.npz", "train_labels.npz")}
    server.stall_s = 3.5  # per file: 7 s in all, against --dist-timeout 6
    flags = [a.format(data=small_data) for a in SMALL_RUN if a not in ("--data-dir", "{data}")]
    try:
        started = time.monotonic()
        result = torchrun(2, TRAIN_SCRIPT, [*flags, "--epochs", "1", "--dist-timeout", "6", "--mcfam-url", server.url,
                                            "--output-dir", tmp_path / "run"],
                          env=clean_env(XDG_CACHE_HOME=str(tmp_path / "cache")), check=False)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started > 7 and sorted(server.requests) == ["train_images64.npz", "train_labels.npz"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["source_url"] == server.url
