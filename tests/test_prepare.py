"""covid-ddp-prepare: class folders and CSVs of PNG/JPEG/DICOM in, a training folder out."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TRAIN_SCRIPT, as_a_terminal_starts_it, run
from dicom_files import needs_pydicom, write_dicom
from PIL import Image

from covid_ddp.commands.prepare import main as prepare_main
from covid_ddp.data.folders import load_data_dir
from covid_ddp.data.format import to_binary
from covid_ddp.data.image_rows import write_store
from covid_ddp.data.prepare import decode

RNG = np.random.default_rng(7)
PREPARE_SCRIPT = ROOT / "launch" / "prepare.py"


def noise(size=(80, 96)) -> np.ndarray:
    """A distinct picture every call (random images are far from near-duplicates of each other)."""
    return RNG.integers(0, 256, size, dtype=np.uint8)


def class_folders(root, counts={"normal": 3, "Pneumonia": 2, "COVID-19": 3}):
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(noise()).save(root / name / f"{index}.png")
    return root


def cases_csv(root):
    """A hospital export: DICOM files without suffix, a JPEG, patient ids and views in a CSV."""
    (root / "files").mkdir(parents=True)
    rows = [("files/a", "covid", "p1", "AP"), ("files/b", "covid", "p1", "PA"), ("files/c", "normal", "p2", ""),
            ("files/d.jpg", "pneumonia", "", "")]
    for path, *_ in rows[:3]:
        write_dicom(root / path, (noise((128, 128)).astype(np.uint16) * 16), PatientID="secret")
    Image.fromarray(noise()).save(root / "files" / "d.jpg")
    with open(root / "cases.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id", "view", "source"])
        writer.writerows((*row, "hospital") for row in rows)
    return root / "cases.csv"


def prepare(capsys, *argv):
    code = prepare_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_pydicom
def test_folders_and_a_csv_become_one_training_folder_that_trains(tmp_path, capsys):
    folders, table_csv = class_folders(tmp_path / "clinic"), cases_csv(tmp_path / "export")
    out = tmp_path / "prepared"
    code, stdout, err = prepare(capsys, "--output-dir", out, "--workers", "2", folders, table_csv)
    assert code == 0 and "12 images" in stdout and "one source" not in err, "two sources: no such warning"
    data = load_data_dir(out)
    assert data.images.shape == (12, 64, 64) and data.images.dtype == np.uint8
    meta = {key: list(values) for key, values in data.meta.items()}
    classes = list(data.labels.argmax(1))
    by_path = dict(zip(meta["path"], zip(classes, meta["dataset"], meta["patient_id"], meta["view"])))
    assert by_path["normal/0.png"] == (0, "clinic", "clinic:normal/0.png", "")
    assert by_path["Pneumonia/1.png"][0] == 1 and by_path["COVID-19/2.png"][0] == 2
    assert by_path["files/a"] == (3, "hospital", "p1", "AP"), "COVID in the AP view is MCFAM's class 3"
    assert by_path["files/b"][:3] == (2, "hospital", "p1") and by_path["files/c"][0] == 0
    assert by_path["files/d.jpg"][2] == "hospital:files/d.jpg", "no patient id: one patient per image"
    report = json.loads((out / "prepare.json").read_text())
    assert report["per_dataset"] == {"clinic": 8, "hospital": 4} and report["duplicates"] == []
    run([sys.executable, TRAIN_SCRIPT, "--data-dir", out, "--epochs", "1", "--batch-size", "4", "--val-size", "0",
         "--test-size", "0.5", "--bootstrap", "0", "--log-images-every", "0", "--output-dir", tmp_path / "run"])
    assert to_binary(data.labels).sum() == 5
    with open(tmp_path / "run" / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[:6] == ["row", "path", "patient", "source", "label_name", "view"], "meta.npz's columns"
    assert all(row["path"] == meta["path"][int(row["row"])] and row["label"] in ("COVID", "Non-COVID") for row in table)
    # The way back to the original files, and a card that speaks of them, not of public sets.
    inputs = [{"given": str(folders), "path": str(folders.resolve()), "kind": "folder"},
              {"given": str(table_csv), "path": str(table_csv.resolve()), "kind": "csv"}]
    assert report["inputs"] == inputs
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["data"]["prepare"]["inputs"] == inputs and "dataset" not in recorded["config"], "no MCFAM flag"
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "trained and tested on the images given to covid-ddp-prepare" in card and "public data" not in card
    assert f"from `{folders}` (class folders, `{folders.resolve()}`); `{table_csv}` (CSV, " in card
    assert "12 files found, 0 skipped as unreadable, 0 duplicate pair(s) found and 0 image(s) dropped" in card
    assert "Labels are those of the class folders or CSV given to covid-ddp-prepare" in card


@needs_pydicom
def test_dicom_patient_ids_are_used_hashed_when_the_csv_has_none(tmp_path, capsys):
    root = tmp_path / "dicoms"
    for index, patient in enumerate(["A", "A", "B"]):
        write_dicom(root / "covid" / f"{index}.dcm", noise((64, 64)).astype(np.uint16), PatientID=patient,
                    ViewPosition="PA")
    code, _, _ = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "1", root)
    meta = load_data_dir(tmp_path / "out").meta
    ids = list(meta["patient_id"])
    assert code == 0 and ids[0] == ids[1] != ids[2] and all(i.startswith("dicom:") and "A" != i[-1] for i in ids)
    assert list(meta["view"]) == ["PA"] * 3


def test_duplicates_are_reported_and_dropped_on_request(tmp_path, capsys):
    root = class_folders(tmp_path / "set", {"normal": 2, "covid": 2})
    picture = np.asarray(Image.open(root / "normal" / "0.png"))
    Image.fromarray(picture).save(root / "normal" / "copy.png")  # exact copy, same class
    brighter = np.clip(picture.astype(int) + 3, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).save(root / "covid" / "relabelled.png")  # near copy with the other label
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "kept", "--workers", "1", root)
    assert code == 0 and "1 exact and 2 near-duplicate pair(s)" in err
    assert "covid-ddp-prepare: warning: every image comes from one source (set)" in err, "one folder: one source"
    assert len(load_data_dir(tmp_path / "kept").images) == 6
    report = json.loads((tmp_path / "kept" / "prepare.json").read_text())
    assert {(d["first"], d["second"], d["exact"]) for d in report["duplicates"]} == {
        ("normal/0.png", "normal/copy.png", True), ("covid/relabelled.png", "normal/0.png", False),
        ("covid/relabelled.png", "normal/copy.png", False)}
    meta = load_data_dir(tmp_path / "kept").meta  # the copies are one group, which every split keeps in one part
    group_of = dict(zip(meta["path"], meta["duplicate_group"]))
    assert group_of["normal/0.png"] == group_of["normal/copy.png"] == group_of["covid/relabelled.png"]
    assert len(set(group_of.values())) == 4
    code, _, _ = prepare(capsys, "--output-dir", tmp_path / "dropped", "--workers", "1", "--drop-duplicates", root)
    meta = load_data_dir(tmp_path / "dropped").meta
    assert code == 0 and sorted(meta["path"]) == ["covid/0.png", "covid/1.png", "normal/1.png"], \
        "the copy goes; a pair whose labels disagree goes whole"
    assert sorted(meta["duplicate_group"]) == [0, 1, 2], "no copies left: each image its own group, by its row"


def test_label_map_names_other_classes_and_an_unknown_one_is_named(tmp_path, capsys):
    root = class_folders(tmp_path / "set", {"healthy": 2, "sars-cov-2": 2})
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", root)
    assert code == 2 and err.count("\n") == 1 and "unknown class 'healthy'" in err and "--label-map" in err
    assert not (tmp_path / "out").exists()
    code, _, _ = prepare(capsys, "--output-dir", tmp_path / "out", "--label-map", "healthy=0, SARS-CoV-2=2",
                         "--workers", "1", root)
    assert code == 0 and sorted(load_data_dir(tmp_path / "out").labels.argmax(1)) == [0, 0, 2, 2]


@pytest.mark.parametrize("image_format, name", [("store", "train_images64.npy"), ("npz", "train_images64.npz")])
def test_streamed_images_file_is_what_numpy_writes_for_the_kept_images(tmp_path, capsys, image_format, name):
    """Each image goes to disk as it is decoded; after a skipped file and dropped copies, the
    images file is byte for byte numpy's own file of the kept images (bar a zip's time stamps)."""
    root = class_folders(tmp_path / "set", {"normal": 4, "covid": 3})
    Image.fromarray(np.asarray(Image.open(root / "normal" / "0.png"))).save(root / "normal" / "00-copy.png")
    (root / "covid" / "broken.png").write_bytes(b"not a png")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "2", "--skip-errors",
                           "--drop-duplicates", "--format", image_format, root)
    assert code == 0 and "skipped" in err and "1 exact" in err
    kept = sorted(load_data_dir(tmp_path / "out").meta["path"])
    assert "normal/00-copy.png" not in kept and len(kept) == 7, "the later copy and the broken file are gone"
    expected = np.stack([decode(root / path)[0] for path in load_data_dir(tmp_path / "out").meta["path"]])
    if image_format == "store":
        write_store(tmp_path / "numpy.npy", expected)
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    else:
        np.savez_compressed(tmp_path / "numpy.npz", train_images=expected)
        with zipfile.ZipFile(tmp_path / "out" / name) as ours, zipfile.ZipFile(tmp_path / "numpy.npz") as numpys:
            assert ours.namelist() == numpys.namelist() == ["train_images.npy"]
            mine, theirs = ours.infolist()[0], numpys.infolist()[0]
            assert (mine.CRC, mine.compress_size, mine.file_size) == (theirs.CRC, theirs.compress_size, theirs.file_size)
            assert ours.read("train_images.npy") == numpys.read("train_images.npy")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [name, "meta.npz", "prepare.json", "train_labels.npz"]), "no partial file left"


def test_an_unreadable_file_stops_with_its_name_or_is_skipped(tmp_path, capsys):
    root = class_folders(tmp_path / "set", {"normal": 2, "covid": 2})
    (root / "covid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "2", root)
    assert code == 2 and err.count("\n") == 1 and "broken.png" in err and "--skip-errors" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")), "nothing half-written"
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "2", "--skip-errors", root)
    assert code == 0 and "skipped" in err and "broken.png" in err
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert report["images"] == 4 and len(report["skipped"]) == 1


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "nothing", "nothing does not exist"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "not a folder of class subfolders or a .csv file"),
    (lambda p: (p / "flat").mkdir() or Image.fromarray(noise()).save(p / "flat" / "x.png") or p / "flat",
     "no class subfolders"),
    (lambda p: (p / "t.csv").write_text("file,class\nx.png,covid\n") and p / "t.csv", "no path or label column"),
])
def test_sources_that_are_not_a_class_folder_or_csv_are_refused(tmp_path, capsys, make, fragment):
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", make(tmp_path))
    assert code == 2 and err.count("\n") == 1 and fragment in err


def test_a_non_empty_output_folder_is_kept_and_overwrite_replaces_only_a_prepared_one(tmp_path, capsys):
    root = class_folders(tmp_path / "set", {"normal": 2, "covid": 2})
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "thesis.docx").write_text("keep me")
    (tmp_path / "out" / "sub" / "notes.txt").write_text("keep me too")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", root)
    assert code == 2 and "not empty" in err and (tmp_path / "out" / "thesis.docx").exists()
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", "--overwrite", "--workers", "1", root)
    assert code == 2 and err.count("\n") == 1 and "is not a folder covid-ddp-prepare wrote" in err and "sub" in err
    assert (tmp_path / "out" / "thesis.docx").read_text() == "keep me"
    assert (tmp_path / "out" / "sub" / "notes.txt").read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "set"], "no staging folder left behind"

    code, _, _ = prepare(capsys, "--output-dir", tmp_path / "prepared", "--workers", "1", root)
    assert code == 0
    code, _, _ = prepare(capsys, "--output-dir", tmp_path / "prepared", "--overwrite", "--workers", "1", root)
    assert code == 0 and len(load_data_dir(tmp_path / "prepared").images) == 4, "its own folder is replaced"
    (tmp_path / "prepared" / "notes.txt").write_text("added by hand")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "prepared", "--overwrite", "--workers", "1", root)
    assert code == 2 and "notes.txt" in err and (tmp_path / "prepared" / "notes.txt").exists()


def test_a_prepared_folder_inside_an_input_folder_is_refused(tmp_path, capsys):
    root = class_folders(tmp_path / "set", {"normal": 2, "covid": 2})
    code, _, err = prepare(capsys, "--output-dir", root / "covid" / "prepared", "--workers", "1", root)
    assert code == 2 and err.count("\n") == 1 and "lies inside the input folder" in err
    assert not (root / "covid" / "prepared").exists()


def test_the_shared_real_sets_images_prepare_to_themselves(tmp_path, capsys):
    """Their processing is this one: their own 64x64 images, written as PNGs, come back unchanged."""
    shared = TRAIN_SCRIPT.parents[1].parent / "shared" / "data" / "real-cxr"
    if not (shared / "train_images64.npz").is_file():
        pytest.skip("../shared/data/real-cxr is not here")
    data = load_data_dir(shared)
    rows = np.flatnonzero(np.diff(data.images[:, 32, 32].astype(int), prepend=-1) != 0)[:12]  # 12 distinct
    for order, row in enumerate(rows):
        folder = tmp_path / "pngs" / str(int(data.labels[row].argmax()))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[row]).save(folder / f"{order:02d}.png")
    code, _, _ = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "1", tmp_path / "pngs")
    prepared = load_data_dir(tmp_path / "out")
    order = np.argsort([int(Path(p).stem) for p in prepared.meta["path"]])
    np.testing.assert_array_equal(prepared.images[order], data.images[rows])
    np.testing.assert_array_equal(prepared.labels[order], data.labels[rows])


@needs_pydicom
def test_a_pacs_export_uid_names_ap_views_and_a_malformed_window(tmp_path, capsys):
    """Files named by UID are DICOM by their marker; a DICOM's AP view makes COVID class 3; a file
    pydicom cannot window (width 0) is named, or skipped with --skip-errors."""
    root = tmp_path / "pacs"
    write_dicom(root / "covid" / "1.2.840.113619.2.55.1", noise((64, 64)).astype(np.uint16), ViewPosition="AP")
    write_dicom(root / "covid" / "1.2.840.113619.2.55.2", noise((64, 64)).astype(np.uint16), ViewPosition="PA")
    write_dicom(root / "normal" / "IM.0001", noise((64, 64)).astype(np.uint16))
    write_dicom(root / "normal" / "IM.0002", noise((64, 64)).astype(np.uint16), WindowCenter=100, WindowWidth=0)
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "1", root)
    assert code == 2 and err.count("\n") == 1 and "IM.0002" in err and "LUT or window" in err
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "1", "--skip-errors", root)
    assert code == 0 and "IM.0002" in err
    data = load_data_dir(tmp_path / "out")
    assert dict(zip(data.meta["path"], data.labels.argmax(1))) == {
        "covid/1.2.840.113619.2.55.1": 3, "covid/1.2.840.113619.2.55.2": 2, "normal/IM.0001": 0}


def test_csv_blank_rows_are_skipped_and_a_source_inside_the_output_is_refused(tmp_path, capsys):
    Image.fromarray(noise()).save(tmp_path / "a.png")
    Image.fromarray(noise()).save(tmp_path / "b.png")
    (tmp_path / "list.csv").write_text("path,label\na.png,normal\nb.png,covid\n,\n,\n")
    code, _, _ = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "1", tmp_path / "list.csv")
    assert code == 0 and len(load_data_dir(tmp_path / "out").images) == 2
    code, _, err = prepare(capsys, "--output-dir", tmp_path, "--overwrite", tmp_path / "list.csv")
    assert code == 2 and "holds the input" in err and (tmp_path / "a.png").exists()


# --- CSVs read strictly ---------------------------------------------------------------------------


def listed_pictures(folder, count=2):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(noise()).save(folder / f"{index}.png")
    return folder


@pytest.mark.parametrize("header", ["path,label,path", "path,label,Label", " Path ,label,PATH"])
def test_a_column_named_twice_in_any_capitals_is_refused(tmp_path, capsys, header):
    listed_pictures(tmp_path)
    (tmp_path / "list.csv").write_text(f"{header}\n0.png,covid,1.png\n")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", tmp_path / "list.csv")
    assert code == 2 and err.count("\n") == 1 and "is there twice" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_utf8_with_a_bom_and_utf16_from_a_spreadsheet_are_read(tmp_path, capsys, encoding):
    listed_pictures(tmp_path)
    (tmp_path / "list.csv").write_bytes("path,label,source\r\n0.png,covid,Zürich\r\n1.png,normal,Zürich\r\n"
                                        .encode(encoding))
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "1", tmp_path / "list.csv")
    assert code == 0, err
    assert list(np.load(tmp_path / "out" / "meta.npz")["dataset"]) == ["Zürich", "Zürich"]


def test_a_csv_in_another_encoding_is_refused_in_one_line(tmp_path, capsys):
    listed_pictures(tmp_path)
    (tmp_path / "list.csv").write_bytes("path,label,source\n0.png,covid,Zürich\n".encode("latin-1"))
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", tmp_path / "list.csv")
    assert code == 2 and err.count("\n") == 1 and "not UTF-8 or UTF-16 text" in err and "Traceback" not in err


@pytest.mark.parametrize("written", ["../outside/0.png", "{absolute}", "./../outside/0.png"])
def test_paths_outside_the_csvs_folder_are_refused_unless_allowed(tmp_path, capsys, written):
    outside = listed_pictures(tmp_path / "outside")
    listed_pictures(tmp_path / "lists")
    written = written.format(absolute=outside / "0.png")
    (tmp_path / "lists" / "list.csv").write_text(f"path,label\n0.png,normal\n{written},covid\n")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", tmp_path / "lists" / "list.csv")
    assert code == 2 and "line 3" in err and "outside the CSV's folder" in err and "--allow-outside" in err
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", "--workers", "1", "--allow-outside",
                           tmp_path / "lists" / "list.csv")
    assert code == 0, err


def test_a_fifo_in_a_csv_is_refused_before_it_is_opened(tmp_path, capsys):
    listed_pictures(tmp_path)
    os.mkfifo(tmp_path / "pipe.png")  # reading it would wait forever for a writer
    (tmp_path / "list.csv").write_text("path,label\n0.png,normal\npipe.png,covid\n")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", tmp_path / "list.csv")
    assert code == 2 and "line 3" in err and "not a regular file" in err


def test_one_file_listed_under_two_labels_is_a_label_conflict(tmp_path, capsys):
    listed_pictures(tmp_path)
    (tmp_path / "list.csv").write_text("path,label\n0.png,normal\n1.png,covid\n./0.png,COVID\n")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", tmp_path / "list.csv")
    assert code == 2 and err.count("\n") == 1 and "listed twice with different labels" in err
    assert "'normal' on line 2, 'COVID' on line 4" in err


# --- interrupts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ctrl-c to the terminal's process group", "sigterm to the command"])
def test_an_interrupt_while_decoding_ends_in_one_line_with_nothing_written(tmp_path, how):
    import psutil

    one = tmp_path / "one.png"
    Image.fromarray(noise((2048, 2048))).save(one, compress_level=1)  # about 40 ms to decode
    for label in ("normal", "covid"):
        (tmp_path / "set" / label).mkdir(parents=True)
        for index in range(200):  # the same picture under many names: seconds of decoding, made at once
            os.link(one, tmp_path / "set" / label / f"{index}.png")
    command = subprocess.Popen([sys.executable, str(PREPARE_SCRIPT), "--output-dir", str(tmp_path / "out"),
                                "--workers", "2", str(tmp_path / "set")], stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=as_a_terminal_starts_it)
    parent = psutil.Process(command.pid)
    deadline = time.monotonic() + 60
    while len(parent.children()) < 2 and command.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # inside the decoding
    assert command.poll() is None, "decoding ended before the interrupt: make the set larger"
    workers = parent.children()
    if how.startswith("ctrl-c"):
        os.killpg(command.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
    else:
        command.send_signal(signal.SIGTERM)
    _, err = command.communicate(timeout=30)
    expected = signal.SIGINT if how.startswith("ctrl-c") else signal.SIGTERM
    assert command.returncode == 128 + expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and f"interrupted by {expected.name}" in lines[0], err
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers), "workers ended"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "set"], "no folder, staging or output"


@pytest.mark.parametrize("rows, fragment", [
    ("0.png,normal\n,covid\n", "line 3: empty path"),
    ("0.png,normal\nsub,covid\n", "line 3: 'sub' is a folder"),
])
def test_a_csv_row_without_a_file_to_read_is_named_by_line(tmp_path, capsys, rows, fragment):
    listed_pictures(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "list.csv").write_text(f"path,label\n{rows}")
    code, _, err = prepare(capsys, "--output-dir", tmp_path / "out", tmp_path / "list.csv")
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
