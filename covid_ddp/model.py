"""Where the network lived before covid_ddp 0.3 (now ``covid_ddp.models.net``), kept for code that
imports it from here: ``from covid_ddp.model import Net``."""

from .data.format import CLASS_NAMES  # noqa: F401
from .models.net import Net, build_network  # noqa: F401
from .models.spec import ModelSpec  # noqa: F401
