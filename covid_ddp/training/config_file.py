"""Settings files for covid-ddp-train: ``--config FILE``, YAML or JSON.

    covid-ddp-train --config recipe.yaml --epochs 20
    covid-ddp-train --config runs/<run>/config.json --output-dir runs/again

A file holds settings named as the flags (``batch_size: 64`` or ``batch-size: 64``), or is a
run's own ``config.json``, whose recorded flags are read without the ones that say where that
run was (its folder, resume and overwrite): given back, it trains the same run again. The
settings become flags placed before the command line's own, so a flag typed there wins, and
every value goes through the parser, choices and bounds a typed flag does; a mistake is named
with the file and its key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

from ..errors import UserError

SUFFIXES = (".json", ".yaml", ".yml")
# What a run's config.json records about where that run was, not what it trained: not given back.
RUN_PLACE = ("output_dir", "resume", "overwrite", "resume_with_changes")


def read_settings(path: Path) -> dict:
    """The settings of ``path``: a mapping of names to values (a run's config.json: its flags)."""
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--config {path}: give a .json, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--config {path}: cannot read it ({error})") from None
    settings = _parse(path, text)
    if not isinstance(settings, dict):
        raise UserError(f"--config {path}: holds {type(settings).__name__}, not settings (name: value)")
    recorded = settings.get("config")
    if isinstance(recorded, dict) and "command" in settings:  # a run's config.json
        return {name: value for name, value in recorded.items() if name not in RUN_PLACE}
    return settings


def _parse(path: Path, text: str):
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as error:
            raise UserError(f"--config {path}: not valid JSON ({error})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise UserError(f"--config {path}: not valid YAML{at} ({getattr(error, 'problem', None) or error})") from None


def settings_as_flags(path: Path, settings: dict, fields: list[dataclasses.Field]) -> list[str]:
    """The command-line flags that say what ``settings`` say; unknown keys and values no flag
    could take are refused, naming the nearest key."""
    by_name = {spec.name: spec for spec in fields}
    flags = []
    for key, value in settings.items():
        name = str(key).strip().lstrip("-").replace("-", "_")
        if name not in by_name:
            near = difflib.get_close_matches(name, by_name, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else "; the keys are covid-ddp-train's flags"
            raise UserError(f"--config {path}: unknown key '{key}'{hint}")
        flags += _flag_of(path, key, name, value, by_name[name])
    return flags


def _flag_of(path: Path, key, name: str, value, spec: dataclasses.Field) -> list[str]:
    flag = f"--{name.replace('_', '-')}"
    if value is None:  # the flag's default
        return []
    if spec.type in ("bool", bool):
        if not isinstance(value, bool):
            raise UserError(f"--config {path}: '{key}' is true or false, got {value!r}")
        return [flag] if value else [f"--no-{flag[2:]}"]
    if spec.metadata.get("nargs") == "+":
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(item, (str, int, float)) for item in values):
            raise UserError(f"--config {path}: '{key}' is one or more names, got {value!r}")
        return [flag, *map(str, values)]
    if isinstance(value, (list, dict)):
        raise UserError(f"--config {path}: '{key}' takes one value, got {value!r}")
    return [flag, str(value)]
