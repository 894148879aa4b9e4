"""Where the network lived before covid_ddp 0.3 (now ``covid_ddp.models.net``), kept for code that
imports it from here: ``from covid_ddp.model import Net``."""

from .models.net import CLASS_NAMES, ModelSpec, Net, build_network  # noqa: F401
