"""Where the network lived before covid_ddp 0.3 (now ``covid_ddp.models.net``), kept for code that
imports it from here: ``from covid_ddp.model import Net``, and the module's other public names."""

from .data.format import CLASS_NAMES, NUM_CLASSES  # noqa: F401
from .models.net import (CONV_BN_PAIRS, NET_MIN_SIZE, NORMALIZATION_KEYS, Net, build_network,  # noqa: F401
                         fold_batchnorm, fold_normalization, for_inference, original_state_dict, raw_pixel_state_dict,
                         watch_penultimate, weights_state_dict)
from .models.spec import ModelSpec  # noqa: F401
