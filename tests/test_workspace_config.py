"""The typed workspace config: TOML -> dataclasses -> JSON and back, errors that name the
field at fault, and the copy saved beside the store."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tracin_core import Workspace
from tracin_core.workspace import DEMO_TOML
from tracin_core.workspace_config import (
    JSON_NAME,
    CheckpointsConfig,
    DatasetConfig,
    WorkspaceConfig,
    WorkspaceConfigError,
)
from tracin_core.errors import WorkspaceError

TOML = """
name = "audit"
batch_size = 64

[model]
factory = "tracin_core.models:DigitsCNN"
final_fc_layer = "fc2"
kwargs = { num_classes = 10 }

[checkpoints]
paths = ["a.pt", "b.pt"]
learning_rates = [0.1, 0.05]

[train]
kind = "npy"
path = "x.npy"
labels = "y.csv"
normalize = [0.25, 0.5]
labels_override = "fix.csv"
flagged = ["duplicate"]

[test]
kind = "digits"
split = "test"

[loss]
name = "cross_entropy"
reduction = "mean"

[evaluation]
ground_truth = "truth.csv"
column = "label"
"""


def test_toml_to_dataclasses_to_json_and_back(tmp_path: Path) -> None:
    (tmp_path / "ws.toml").write_text(TOML)
    config = WorkspaceConfig.from_toml(tmp_path / "ws.toml")
    assert config.name == "audit" and config.batch_size == 64
    assert config.model.kwargs == {"num_classes": 10}
    assert config.checkpoints == CheckpointsConfig(paths=("a.pt", "b.pt"), learning_rates=(0.1, 0.05))
    assert config.train == DatasetConfig(kind="npy", path="x.npy", labels="y.csv", normalize=(0.25, 0.5),
                                         labels_override="fix.csv", flagged=("duplicate",))
    assert config.test == DatasetConfig(kind="digits", split="test")
    assert config.loss.reduction == "mean" and config.evaluation.column == "label"
    assert config.base_dir == str(tmp_path.resolve())
    assert config.checkpoint_paths() == [str(tmp_path.resolve() / "a.pt"), str(tmp_path.resolve() / "b.pt")]
    assert config.train.load_arguments() == {"path": "x.npy", "labels": "y.csv", "normalize": [0.25, 0.5],
                                             "labels_override": "fix.csv", "flagged": ["duplicate"]}
    # JSON: plain data, read back equal; unset fields are left out
    path = config.to_json(tmp_path / "saved" / "workspace.json")
    data = json.loads(path.read_text())
    assert data["checkpoints"] == {"paths": ["a.pt", "b.pt"], "learning_rates": [0.1, 0.05]}
    assert "root" not in data["train"] and data["test"] == {"kind": "digits", "split": "test"}
    assert WorkspaceConfig.from_json(path) == config
    assert WorkspaceConfig.from_dict(config.to_dict()) == config
    # the TOML's learning_rate (one for all) reads as learning_rates; defaults fill the rest
    minimal = WorkspaceConfig.from_dict({"model": {"factory": "m:f", "final_fc_layer": "fc"},
                                         "checkpoints": {"paths": "ckpts", "learning_rate": 0.5},
                                         "train": {"kind": "digits"}}, default_name="x")
    assert minimal.checkpoints.learning_rates == 0.5 and minimal.test is None
    assert minimal.loss.name == "cross_entropy" and minimal.batch_size == 256 and minimal.name == "x"
    assert WorkspaceConfig.from_dict(minimal.to_dict()) == minimal


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("model"), r"missing \[model\] table"),
    (lambda d: d["model"].pop("final_fc_layer"), r"\[model\] needs 'factory' and 'final_fc_layer'"),
    (lambda d: d["model"].update(factory=3), r"\[model\] factory must be a string"),
    (lambda d: d["model"].update(kwargs=[1]), r"\[model\] kwargs must be a table"),
    (lambda d: d["model"].update(colour="red"), r"\[model\] unknown key\(s\) colour"),
    (lambda d: d["checkpoints"].pop("paths"), r"\[checkpoints\] needs 'paths'"),
    (lambda d: d["checkpoints"].update(paths=[]), r"\[checkpoints\] paths is an empty list"),
    (lambda d: d["checkpoints"].update(learning_rates=[0.1, -1]), r"\[checkpoints\] learning_rates\[1\] must be a positive"),
    (lambda d: d["train"].update(kind="nope"), r"\[train\] kind must be one of"),
    (lambda d: d["train"].update(colour="red"), r"\[train\] unknown key\(s\) colour"),
    (lambda d: d["train"].update(flagged="drop"), r"\[train\] flagged must be"),
    (lambda d: d["train"].update(normalize=[1]), r"\[train\] normalize must be \[mean, std\]"),
    (lambda d: d["test"].update(image_size=0), r"\[test\] image_size must be a positive integer"),
    (lambda d: d["loss"].update(name="hinge"), r"\[loss\] name: unknown loss 'hinge'"),
    (lambda d: d["loss"].update(reduction="max"), r"\[loss\] reduction must be 'sum' or 'mean'"),
    (lambda d: d["evaluation"].update(column=""), r"\[evaluation\] column must be a non-empty string"),
    (lambda d: d.update(batch_size=0), r"batch_size must be a positive integer"),
    (lambda d: d.update(colour="red"), r"unknown key\(s\) colour"),
])
def test_errors_name_the_field_at_fault(tmp_path: Path, change, message) -> None:
    import tomllib

    data = tomllib.loads(TOML)
    change(data)
    with pytest.raises(WorkspaceConfigError, match=message) as info:
        WorkspaceConfig.from_dict(data, where="ws.toml")
    assert str(info.value).startswith("ws.toml: ")
    assert isinstance(info.value, WorkspaceError) and isinstance(info.value, ValueError)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceConfigError, match="no such workspace file"):
        WorkspaceConfig.from_toml(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(WorkspaceConfigError, match="not a valid TOML file"):
        WorkspaceConfig.from_toml(tmp_path / "bad.toml")
    with pytest.raises(WorkspaceConfigError, match="is a folder"):
        WorkspaceConfig.from_toml(tmp_path)


def test_workspace_keeps_and_saves_its_config(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    shutil.copytree(DEMO_TOML.parent, folder)
    ws = Workspace.from_toml(folder / "workspace.toml", cache_dir=tmp_path / "c")
    assert ws.config == WorkspaceConfig.from_toml(folder / "workspace.toml")
    saved = ws.store_dir / JSON_NAME
    assert not saved.exists()
    ws.ensure_store("fast")  # the first engine writes the config beside the stores
    assert WorkspaceConfig.from_json(saved) == ws.config
    # the saved copy opens the same workspace (same fingerprint, so the same store)
    again = Workspace.from_config(WorkspaceConfig.from_json(saved), cache_dir=tmp_path / "c")
    assert again.fingerprint == ws.fingerprint and again.store_dir == ws.store_dir
    # from_toml's flagged replaces [train] flagged
    kept = Workspace.from_toml(folder / "workspace.toml", cache_dir=tmp_path / "c", flagged="keep")
    assert kept.config.train.flagged == "keep" and ws.config.train.flagged is None
