"""The MCFAM set (http://www-users.math.umn.edu/~jwcalder/MCFAM/): downloaded into a per-user cache,
checked, and its files' SHA-256 recorded beside them so a later run need not hash them again.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..files import atomic_path
from .download import DEFAULT_TIMEOUT_S, DownloadError, download
from .format import IMAGES_FILE, IMAGES_KEY, LABELS_FILE, LABELS_KEY, MCFAM_BASE_URL, hash_record, sha256_of
from .store import image_size_of, load_array, refuse_a_folder_of_other_files, validate_images, validate_labels


def default_data_dir() -> Path:
    """A per-user cache folder, as pip and torch hub use ($XDG_CACHE_HOME or ~/.cache)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "covid_ddp" / "mcfam"


def fetch_mcfam(data_dir: Path, base_url: str = MCFAM_BASE_URL, pins: dict | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Download whichever MCFAM file is missing from ``data_dir``, or changed since it was downloaded.

    A download is kept only when it loads and validates (and matches its pinned sha256, if
    any); its sha256 is recorded beside it (``<file>.sha256``) so a cached copy that later
    changes on disk is noticed and fetched again.
    """
    pins = pins or {}
    if not all((Path(data_dir) / name).exists() for name in (IMAGES_FILE, LABELS_FILE)):
        refuse_a_folder_of_other_files(Path(data_dir))
    mcfam_images = functools.partial(validate_images, image_size=image_size_of(IMAGES_FILE))  # 64: MCFAM's
    for name, key, validate in ((IMAGES_FILE, IMAGES_KEY, mcfam_images), (LABELS_FILE, LABELS_KEY, validate_labels)):
        destination = Path(data_dir) / name
        problem = ""
        if destination.exists():
            if _matches_recorded_hash(destination):
                continue
            problem = f"cached {destination} no longer matches the sha256 recorded when it was downloaded; "
            print(f"note: {problem}fetching it again", file=sys.stderr)
            destination.unlink()
        url = base_url.rstrip("/") + "/" + name

        def check(tmp: Path, key=key, validate=validate, pinned=pins.get(name)) -> None:
            if pinned and (actual := sha256_of(tmp)) != pinned.lower():
                raise ValueError(f"its sha256 {actual} is not the pinned {pinned}")
            validate(load_array(tmp, key), url)

        try:
            download(url, destination, validate=check, timeout_s=timeout_s)
        except (DownloadError, UserError) as error:
            raise UserError(
                f"{problem}{error}. To go on offline, pass --data-dir DIR with a local copy of {IMAGES_FILE} and "
                f"{LABELS_FILE}, or use --dataset synthetic"
            ) from None
        with atomic_path(hash_record(destination)) as tmp:
            tmp.write_text(sha256_of(destination) + "\n")


def _matches_recorded_hash(path: Path) -> bool:
    """True when no hash was recorded (a copy the user put there) or the recorded one matches."""
    record = hash_record(path)
    return not record.exists() or record.read_text().strip() == sha256_of(path)
