"""tracin_core: TracIn influence engine (Captum-compatible, one pass over the data) and
the audit backend of the app: ``tracin_core.engine`` and ``tracin_core.audit``.

Public names are loaded lazily so that importing one part (say ``ReviewStore``)
does not import torch-heavy modules it does not need.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TracInCP": "tracin_core.engine.tracin",
    "TracInCPFast": "tracin_core.engine.tracin",
    "TracInCPFastRandProj": "tracin_core.engine.tracin",
    "KMostInfluentialResults": "tracin_core.engine.scoring",
    "AnnoyNearestNeighbors": "tracin_core.engine.nearest_neighbors",
    "load_checkpoint": "tracin_core.engine.checkpoints",
    "CheckpointError": "tracin_core.engine.checkpoints",
    "TracInArgumentError": "tracin_core.engine.errors",
    "Workspace": "tracin_core.audit.workspace",
    "WorkspaceConfig": "tracin_core.audit.workspace_config",
    "ReviewStore": "tracin_core.audit.review",
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
