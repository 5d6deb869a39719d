"""Settings from the environment, read when called (never at import).

Reading at call time means a test, or a server started with another environment, sees
the value in force now, and no module keeps a stale copy that must be patched.

* ``TRACIN_CACHE``: the app's cache folder (default ``~/.cache/tracin_audit``): feature
  stores under ``stores/``, uploads under ``uploads/``;
* ``TRACIN_REVIEW_DB``: the review store's SQLite file (default
  ``<TRACIN_CACHE>/reviews.sqlite``);
* ``TRACIN_BATCH_DECODE`` / ``TRACIN_CHANNELS_LAST``: engine switches (default on),
  read through :func:`env_flag` by ``batching`` and ``featurize``.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "env_flag", "review_db", "store_cache_dir", "upload_dir"]

_OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool = True) -> bool:
    """Environment variable ``name`` as a switch: ``0``/``false``/``no``/``off`` (any
    case, spaces ignored) is off, any other value on; unset: ``default``."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in _OFF


def cache_dir() -> Path:
    """The app's cache folder: ``TRACIN_CACHE``, else ``~/.cache/tracin_audit``."""
    value = os.environ.get("TRACIN_CACHE", "").strip()
    return Path(value) if value else Path.home() / ".cache" / "tracin_audit"


def store_cache_dir() -> Path:
    """Where workspaces keep their feature stores: ``<cache_dir()>/stores``."""
    return cache_dir() / "stores"


def upload_dir() -> Path:
    """Where the app keeps uploaded files: ``<cache_dir()>/uploads``."""
    return cache_dir() / "uploads"


def review_db() -> Path:
    """The review store's file: ``TRACIN_REVIEW_DB``, else ``<cache_dir()>/reviews.sqlite``."""
    value = os.environ.get("TRACIN_REVIEW_DB", "").strip()
    return Path(value) if value else cache_dir() / "reviews.sqlite"
