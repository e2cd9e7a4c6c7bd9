"""Fault injection for tests and drills (like Flagger's podinfo faults); off unless ``TIDELINE_CHAOS`` is set.

``TIDELINE_CHAOS="error_rate=0.5,delay_ms=300"``:

* ``error_rate`` (0..1): that share of predictions fails with HTTP 500 (``chaos: injected failure``);
* ``delay_ms`` (>= 0): predictions are slowed down by that many milliseconds (without blocking the server);
* ``delay_rate`` (0..1, default 1): the share of predictions that get the delay;
* ``seed`` (integer, optional): makes the random choices reproducible.

Parsing is strict: an unknown key, a repeated key, or a value out of range refuses to start the predictor.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from tideline.errors import ConfigError

ENV: Final = "TIDELINE_CHAOS"
_KEYS: Final = ("error_rate", "delay_ms", "delay_rate", "seed")


@dataclass(frozen=True)
class Chaos:
    """The faults to inject (see the module docstring); all zero means off."""
    error_rate: float = 0.0
    delay_ms: float = 0.0
    delay_rate: float = 1.0
    seed: int | None = None

    @property
    def active(self) -> bool:
        """True when some fault is injected (failures, or delays for a non-zero share)."""
        return self.error_rate > 0 or (self.delay_ms > 0 and self.delay_rate > 0)

    def describe(self) -> str:
        """``error_rate=...,delay_ms=...,delay_rate=...`` in the ``TIDELINE_CHAOS`` form (without the seed)."""
        return f"error_rate={self.error_rate:g},delay_ms={self.delay_ms:g},delay_rate={self.delay_rate:g}"


class ChaosMonkey:
    """Draws, per prediction, whether to fail and how long to wait."""

    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos
        self._rng = random.Random(chaos.seed)

    def delay_s(self) -> float:
        """Seconds to delay this prediction: ``delay_ms`` for a ``delay_rate`` share of draws, else 0."""
        c = self.chaos
        if c.delay_ms > 0 and (c.delay_rate >= 1 or self._rng.random() < c.delay_rate):
            return c.delay_ms / 1000.0
        return 0.0

    def fail(self) -> bool:
        """Whether this prediction fails: True for an ``error_rate`` share of draws."""
        return self.chaos.error_rate > 0 and self._rng.random() < self.chaos.error_rate


def parse_chaos(text: str | None) -> Chaos | None:
    """Parse ``TIDELINE_CHAOS``; None/empty -> None (off). Anything malformed is a ConfigError."""
    if text is None or not text.strip():
        return None
    hint = "e.g. TIDELINE_CHAOS=\"error_rate=0.5,delay_ms=300\"; keys: " + ", ".join(_KEYS)
    values: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"{ENV}={text!r}: empty item", hint=hint)
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"{ENV}={text!r}: {part!r} is not key=value", hint=hint)
        if key not in _KEYS:
            raise ConfigError(f"{ENV}={text!r}: unknown key {key!r}", hint=hint)
        if key in values:
            raise ConfigError(f"{ENV}={text!r}: {key!r} is given twice", hint=hint)
        values[key] = value

    def number(key: str, lo: float, hi: float) -> float:
        try:
            v = float(values[key])
        except ValueError:
            raise ConfigError(f"{ENV}: {key}={values[key]!r} is not a number", hint=hint) from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ConfigError(f"{ENV}: {key}={values[key]} is outside [{lo:g}, {hi:g}]", hint=hint)
        return v

    seed = None
    if "seed" in values:
        try:
            seed = int(values["seed"])
        except ValueError:
            raise ConfigError(f"{ENV}: seed={values['seed']!r} is not an integer", hint=hint) from None
    return Chaos(
        error_rate=number("error_rate", 0.0, 1.0) if "error_rate" in values else 0.0,
        delay_ms=number("delay_ms", 0.0, 600_000.0) if "delay_ms" in values else 0.0,
        delay_rate=number("delay_rate", 0.0, 1.0) if "delay_rate" in values else 1.0,
        seed=seed,
    )
