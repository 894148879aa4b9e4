"""covid_ddp: distributed training of a COVID / non-COVID chest X-ray classifier with accelerate.

For research and education only; not for clinical or diagnostic use.

The names below are imported on first use, so that importing a light module of the package
(``covid_ddp.launcher_watch``, which a worker arms before anything else) does not import torch.
"""

import importlib

_EXPORTS = {"Net": ".models.net", "gradcam": ".models.gradcam", "load_model": ".models.loading",
            "predict": ".models.inference", "Ensemble": ".evaluation.ensemble",
            "update_model_card": ".evaluation.model_card", "TrainConfig": ".training.config",
            "train": ".training.trainer", "TrainedRun": ".training.trainer", "evaluate": ".evaluation.evaluate",
            "EvaluationResult": ".evaluation.evaluate"}

__all__ = sorted(_EXPORTS)
__version__ = "0.3.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
