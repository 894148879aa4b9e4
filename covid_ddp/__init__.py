"""covid_ddp: distributed training of a COVID / non-COVID chest X-ray classifier with accelerate.

For research and education only; not for clinical or diagnostic use.

The names below are imported on first use, so that importing a light module of the package
(``covid_ddp.launcher_watch``, which a worker arms before anything else) does not import torch.
"""

import importlib
import sys
import types

_EXPORTS = {"Net": ".model", "gradcam": ".gradcam", "load_model": ".predict", "predict": ".predict",
            "Ensemble": ".ensemble", "update_model_card": ".model_card", "TrainConfig": ".config",
            "TrainedRun": ".train", "evaluate": ".evaluation", "EvaluationResult": ".evaluation"}

__all__ = sorted(_EXPORTS)
__version__ = "0.2.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing the submodule ``covid_ddp.predict`` (or ``.gradcam``) would bind the package's
    ``predict`` to that module; the package exports the function of that name instead."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
