"""The values a numeric flag may take, said once and checked the same way by every command.

A bound is finite by definition: NaN passes ``value <= 0`` (every comparison with NaN is false),
so ``--lr nan`` used to train; here NaN and infinities fail every bound. ``Bounds.parse`` is the
argparse ``type`` of a flag (a bad value is one line naming the flag); ``Bounds.check`` checks a
value already parsed (``TrainConfig.validate``, whose fields also come from Python).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from .data.format import MIN_IMAGE_SIZE
from .errors import UserError


@dataclass(frozen=True)
class Bounds:
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself refused: Bounds(low=0, low_open=True) is "positive"
    high_open: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            if not self.low_open and not self.high_open:
                return f"{kind} between {_shown(self.low)} and {_shown(self.high)}"
            if self.low_open and self.high_open:
                return f"between {_shown(self.low)} and {_shown(self.high)} (exclusive)"
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {opening}{_shown(self.low)}, {_shown(self.high)}{closing}"
        if self.low is not None:
            if (self.low == 0 and self.low_open) or (self.kind is int and self.low == 1 and not self.low_open):
                return "positive"
            return f"{_shown(self.low)} or more" if not self.low_open else f"above {_shown(self.low)}"
        if self.high is not None:
            return f"at most {_shown(self.high)}"
        return f"{kind}, finite"

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind is int and value != int(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def check(self, value, flag: str):
        """``value`` if it holds (None passes: an option left unset), else a UserError naming ``flag``."""
        if value is not None and not self.holds(value):
            raise UserError(f"{flag} must be {self.describe()}, got {value}")
        return value

    def parse(self, text: str):
        """argparse's ``type``: the value, or an error argparse reports in one line with the flag."""
        try:
            value = self.kind(text) if self.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got '{text}'") from None
        if not self.holds(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value


def _shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


MAX_IMAGE_SIZE = 1024  # a side beyond any chest X-ray model's input; 100,000 asked a worker for 13 GB
MAX_BOOTSTRAP = 10_000  # resamples: their counts take resamples x images x 8 bytes (10,000 x 3,000: 240 MB)

POSITIVE = Bounds(float, low=0, low_open=True)
POSITIVE_INT = Bounds(int, low=1)
COUNT = Bounds(int, low=0)
SEED = Bounds(int, low=0, high=2**32 - 1)  # NumPy's seeds
PROBABILITY = Bounds(float, low=0, high=1)
FRACTION = Bounds(float, low=0, high=1, low_open=True, high_open=True)
BOOTSTRAP = Bounds(int, low=0, high=MAX_BOOTSTRAP)
IMAGE_SIZES = Bounds(int, low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE)
