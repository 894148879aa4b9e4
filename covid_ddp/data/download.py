"""Fetching a file over HTTP(S) into a cache, atomically and with retries.

The file is streamed to a temporary name beside its destination and renamed
only after ``validate`` accepted it, so an interrupted or bad download never
leaves a file that a later run could mistake for a good one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3


class DownloadError(Exception):
    """Every attempt to fetch a URL failed; the message says why."""


def download(
    url: str,
    destination: Path,
    validate: Callable[[Path], None] = lambda path: None,
    retries: int = DEFAULT_RETRIES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    backoff_s: float = 1.0,
) -> Path:
    """Download ``url`` to ``destination``; ``validate(tmp_path)`` raises on a bad file."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, destination, validate, timeout_s)
            return destination
        except urllib.error.HTTPError as error:
            last_error = error
            if 400 <= error.code < 500 and error.code not in (408, 429):
                break  # A missing file does not appear by asking again.
        except (OSError, ValueError) as error:  # URLError, timeouts, short reads, bad content
            last_error = error
        if attempt < retries:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise DownloadError(f"could not download {url}: {_describe(last_error)}")


def _fetch_once(url: str, destination: Path, validate: Callable[[Path], None], timeout_s: float) -> None:
    handle, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, out, length=1 << 20)
        size = tmp_path.stat().st_size
        if expected is not None and size != int(expected):
            raise ValueError(f"truncated transfer: got {size} of {expected} bytes")
        try:
            validate(tmp_path)
        except Exception as error:  # a corrupted transfer may come right next time: retry it
            raise ValueError(f"the downloaded file is invalid: {error}") from error
        os.replace(tmp_path, destination)
    finally:
        tmp_path.unlink(missing_ok=True)


def _describe(error: Exception | None) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{error.reason}"
    return str(error) or type(error).__name__
