"""``--log-with``: which experiment trackers a run logs to (accelerate's names), checked when the
flags are read, before any process starts one (``trackers`` starts them)."""

from __future__ import annotations

import importlib.util

from ..errors import UserError

TENSORBOARD = "tensorboard"
# The trackers setup.cfg has an extra of the same name for; the others are named by their PyPI
# package, the tracker's own name but where PACKAGES says otherwise.
EXTRAS = {"mlflow", "wandb"}
PACKAGES = {"comet_ml": "comet-ml"}


def tracker_names(text: str) -> tuple[str, ...]:
    """``--log-with``: accelerate's tracker names, comma-separated ('none': no tracker), each
    refused in one line when accelerate does not know it or its package is missing."""
    names = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    if names in ((), ("none",)):
        return ()
    known = _known_trackers()
    for name in names:
        if name not in known:
            raise UserError(f"--log-with {name}: not a tracker accelerate knows; choose from {', '.join(known)} "
                            "(comma-separated), or none")
        if importlib.util.find_spec(name) is None:
            raise UserError(f"--log-with {name}: the {PACKAGES.get(name, name)} package is not installed; "
                            f"{install_hint(name)}")
    return names


def install_hint(name: str) -> str:
    if name in EXTRAS:
        return f'pip install -e ".[{name}]" (or pip install "covid_ddp[{name}]")'
    return f"pip install {PACKAGES.get(name, name)}"


def _known_trackers() -> list[str]:
    from accelerate.utils import LoggerType

    return [kind.value for kind in LoggerType if kind.value != "all"]
