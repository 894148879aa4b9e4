"""Which set a run reads (``--dataset``, ``--data-dir``): the MCFAM files (downloaded into the cache
when missing), the synthetic set, or folders of one's own; checked against pinned hashes."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .folders import as_folders, load_data_dirs
from .format import IMAGE_SIZE, IMAGES_FILE, LABELS_FILE, RawData, hash_record
from .mcfam import default_data_dir, fetch_mcfam
from .synthetic import make_synthetic


def check_pins(data: RawData, pins: dict) -> None:
    """Refuse files whose sha256 is not the one pinned with --sha256-images / --sha256-labels."""
    for name, pinned in pins.items():
        if name not in data.provenance["files"]:
            raise UserError(f"--sha256-images pins {name}, which {data.provenance['data_dir']} does not hold; "
                            "pin only MCFAM's own files")
        actual = data.provenance["files"][name]["sha256"]
        if pinned and actual != pinned.lower():
            raise UserError(f"{Path(data.provenance['data_dir']) / name}: sha256 is {actual}, not the pinned {pinned}; "
                            "the file differs from the one you pinned")


def fetch_dataset(dataset: str, data_dir, base_url: str, pins: dict | None = None, into_data_dir: bool = False) -> None:
    """Download what ``load_dataset`` will read and is missing: MCFAM into the cache, or into the
    one ``--data-dir`` only when asked (``into_data_dir``, ``--download``). A user's folders are
    never a download target otherwise: ``load_data_dir`` says what they lack."""
    folders = as_folders(data_dir)
    if dataset != "mcfam":
        return
    if folders is None:
        fetch_mcfam(default_data_dir(), base_url, pins)
    elif into_data_dir:
        if len(folders) > 1:
            raise UserError("--download fills one --data-dir folder; several folders are read as they are")
        fetch_mcfam(folders[0], base_url, pins)


def load_dataset(dataset: str, data_dir, synthetic_size: int, seed: int, base_url: str,
                 pins: dict | None = None, image_size: int | None = None) -> RawData:
    """The set a run trains on: synthetic, or MCFAM-format files in ``data_dir`` (one folder or a
    list; default: the cache), as they are (``fetch_dataset`` downloads first). Files a download
    brought (their sha256 recorded beside them) name ``base_url`` as their source in config.json."""
    if dataset == "synthetic":
        size = image_size or IMAGE_SIZE
        images, labels = make_synthetic(synthetic_size, seed, image_size=size)
        # "covid_ddp.synthetic": the generator's name in every run's fingerprint (a resume compares it), kept as is.
        return RawData(images, labels, {"generator": "covid_ddp.synthetic", "size": synthetic_size, "seed": seed,
                                        "image_size": size})
    if dataset != "mcfam":
        raise UserError(f"unknown dataset '{dataset}': use 'mcfam' or 'synthetic'")
    folders = as_folders(data_dir) or [default_data_dir()]
    if pins and len(folders) > 1:
        raise UserError("--sha256-images/--sha256-labels pin the files of one folder; with several --data-dir "
                        "folders check config.json's sha256 of each instead")
    data = load_data_dirs(folders, image_size)
    check_pins(data, pins or {})
    # MCFAM only where a download brought the files (their sha256 recorded beside them): a folder
    # of the user's own is recorded as such, never with MCFAM's address.
    if all(hash_record(folder / name).is_file() for folder in folders for name in (IMAGES_FILE, LABELS_FILE)):
        data.provenance.update(source="mcfam", source_url=base_url)
    else:
        data.provenance["source"] = "folders"
    return data
