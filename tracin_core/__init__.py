"""tracin_core: TracIn influence engine (Captum-compatible, one pass over the data).

Public names are loaded lazily so that importing one part (say ``ReviewStore``)
does not import torch-heavy modules it does not need.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TracInCP": "tracin_core.tracin",
    "TracInCPFast": "tracin_core.tracin",
    "TracInCPFastRandProj": "tracin_core.tracin",
    "KMostInfluentialResults": "tracin_core.scoring",
    "AnnoyNearestNeighbors": "tracin_core.nearest_neighbors",
    "load_checkpoint": "tracin_core.checkpoints",
    "CheckpointError": "tracin_core.checkpoints",
    "TracInArgumentError": "tracin_core.errors",
    "Workspace": "tracin_core.workspace",
    "WorkspaceConfig": "tracin_core.workspace_config",
    "ReviewStore": "tracin_core.review",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tracin_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
