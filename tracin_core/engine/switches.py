"""The engine's switches from the environment, read when called (never at import).

``TRACIN_BATCH_DECODE`` (:mod:`tracin_core.engine.batching`) and ``TRACIN_CHANNELS_LAST``
(:mod:`tracin_core.engine.featurize`), both on by default. The app's paths
(``TRACIN_CACHE``, ``TRACIN_REVIEW_DB``) are :mod:`tracin_core.audit.settings`.
"""
from __future__ import annotations

import os

__all__ = ["env_flag"]

_OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool = True) -> bool:
    """Environment variable ``name`` as a switch: ``0``/``false``/``no``/``off`` (any
    case, spaces ignored) is off, any other value on; unset: ``default``."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in _OFF
