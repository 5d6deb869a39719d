"""Settings from the environment are read when called (tracin_core.settings), so a
change of environment after import is seen, and no module keeps a stale path."""
from __future__ import annotations

from pathlib import Path

import pytest

from tracin_core import settings
from tracin_core.batching import batch_decode_enabled
from tracin_core.featurize import channels_last_enabled


def test_paths_follow_the_environment_at_call_time(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACIN_CACHE", raising=False)
    monkeypatch.delenv("TRACIN_REVIEW_DB", raising=False)
    home = Path.home() / ".cache" / "tracin_audit"
    assert settings.cache_dir() == home and settings.review_db() == home / "reviews.sqlite"
    monkeypatch.setenv("TRACIN_CACHE", str(tmp_path / "c"))   # after import: still seen
    assert settings.cache_dir() == tmp_path / "c"
    assert settings.store_cache_dir() == tmp_path / "c" / "stores"
    assert settings.upload_dir() == tmp_path / "c" / "uploads"
    assert settings.review_db() == tmp_path / "c" / "reviews.sqlite"
    monkeypatch.setenv("TRACIN_REVIEW_DB", str(tmp_path / "r.sqlite"))
    assert settings.review_db() == tmp_path / "r.sqlite"


def test_a_workspace_without_cache_dir_uses_the_cache_in_force(tmp_path, monkeypatch):
    from tracin_core import Workspace
    from tracin_core.datasets import load_dataset
    from tracin_core.models import DigitsCNN
    import torch

    monkeypatch.setenv("TRACIN_CACHE", str(tmp_path))
    ckpt = tmp_path / "c.pt"
    torch.save(DigitsCNN().state_dict(), ckpt)
    ws = Workspace(name="w", model_factory=DigitsCNN, final_fc_layer="fc2", checkpoints=[str(ckpt)],
                   learning_rates=[0.1], train=load_dataset("digits", split="test"))
    assert ws.cache_dir == tmp_path / "stores"


@pytest.mark.parametrize("value, on", [(None, True), ("1", True), ("yes", True), ("0", False),
                                       (" OFF ", False), ("false", False), ("no", False)])
def test_engine_switches(monkeypatch, value, on):
    for name, read in (("TRACIN_BATCH_DECODE", batch_decode_enabled),
                       ("TRACIN_CHANNELS_LAST", channels_last_enabled)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        assert read() is on
        assert settings.env_flag(name) is on
    monkeypatch.delenv("TRACIN_X_UNSET", raising=False)
    assert settings.env_flag("TRACIN_X_UNSET", default=False) is False
