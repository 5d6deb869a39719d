"""The built-in digits demo: deterministic builds and the shipped assets."""
from __future__ import annotations

import csv
import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from tracin_core.audit import demo
from tracin_core.audit.datasets import load_dataset
from tracin_core.audit.models import DigitsCNN

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"


def _state_dicts(folder: Path) -> dict[str, dict]:
    return {p.name: torch.load(p, weights_only=True) for p in sorted(folder.glob("checkpoint-*.pt"))}


def test_build_is_deterministic(tmp_path):
    calls = []
    meta_a = demo.build_demo(tmp_path / "a", seed=0, epochs=3, clean_epochs=1,
                             progress=lambda f, m: calls.append((f, m)))
    meta_b = demo.build_demo(tmp_path / "b", seed=0, epochs=3, clean_epochs=1)
    for name in ("labels.csv", "labels_override.csv", "workspace.toml", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert meta_a == meta_b
    a, b = _state_dicts(tmp_path / "a"), _state_dicts(tmp_path / "b")
    assert list(a) == ["checkpoint-1.pt", "checkpoint-2.pt", "checkpoint-3.pt"]
    assert list(a) == list(b)
    for name in a:
        assert a[name]["epoch"] == b[name]["epoch"] and a[name]["learning_rate"] == 0.05
        sa, sb = a[name]["model_state_dict"], b[name]["model_state_dict"]
        assert list(sa) == list(sb)
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (name, key)
    # checkpoints differ from each other (training happened) and progress ran to the end
    first, last = a["checkpoint-1.pt"]["model_state_dict"], a["checkpoint-3.pt"]["model_state_dict"]
    assert not torch.equal(first["fc2.weight"], last["fc2.weight"])
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # a different seed gives a different mislabelled subset
    demo.build_demo(tmp_path / "c", seed=1, epochs=1, clean_epochs=1)
    assert (tmp_path / "c" / "labels.csv").read_bytes() != (tmp_path / "a" / "labels.csv").read_bytes()


def test_rebuild_removes_stale_checkpoints_and_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "checkpoint-99.pt").write_bytes(b"stale")
    assert demo.main(["--rebuild", "--out", str(out), "--epochs", "2", "--clean-epochs", "1", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*.pt")) == ["checkpoint-1.pt", "checkpoint-2.pt"]
    assert demo.main(["--out", str(out)]) == 0
    assert "complete" in capsys.readouterr().out
    (out / "checkpoint-2.pt").write_bytes(b"tampered")
    assert demo.verify_demo(out) and demo.main(["--out", str(out)]) == 1
    with pytest.raises(SystemExit):
        demo.main(["--rebuild", "--out", str(out), "--epochs", "0"])


def test_checkpoint_epochs_spread():
    assert demo._checkpoint_epochs(30) == [5, 10, 15, 20, 25, 30]
    assert demo._checkpoint_epochs(2) == [1, 2]
    assert demo._checkpoint_epochs(12)[-1] == 12 and len(demo._checkpoint_epochs(12)) == 6


def test_retrain_on_labels():
    labels = load_dataset("digits", split="train").labels.clone()
    labels[:100] = -1
    model, acc = demo.retrain_on_labels(labels, epochs=2, seed=0)
    assert isinstance(model, DigitsCNN) and 0.5 < acc <= 1.0
    model2, acc2 = demo.retrain_on_labels(labels.tolist(), epochs=2, seed=0)
    assert acc2 == acc
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k])
    with pytest.raises(ValueError, match="1437"):
        demo.retrain_on_labels(labels[:10], epochs=1)
    bad = labels.clone()
    bad[5] = 12
    with pytest.raises(ValueError, match="index 5"):
        demo.retrain_on_labels(bad, epochs=1)
    with pytest.raises(ValueError, match="excluded"):
        demo.retrain_on_labels(torch.full((1437,), -1), epochs=1)


# ------------------------------------------------------------------ shipped assets
def test_shipped_assets_are_complete():
    assert demo.demo_dir() == ASSETS
    assert demo.verify_demo(ASSETS) == []
    meta = json.loads((ASSETS / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["n_train"] == 1437 and meta["n_test"] == 360
    assert len(meta["checkpoints"]) == 6
    for ck in meta["checkpoints"]:
        assert hashlib.sha256((ASSETS / ck["file"]).read_bytes()).hexdigest() == ck["sha256"]
    assert meta["test_accuracy_clean"] >= 0.9 and meta["test_accuracy_noisy"] >= 0.85


def test_shipped_checkpoints_load_into_digits_cnn():
    paths = sorted(ASSETS.glob("checkpoint-*.pt"))
    assert len(paths) == 6
    test = load_dataset("digits", split="test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    epochs = []
    for p in paths:
        ck = torch.load(p, weights_only=True)
        assert set(ck) == {"model_state_dict", "learning_rate", "epoch"}
        assert ck["learning_rate"] == pytest.approx(0.05)
        model = DigitsCNN()
        model.load_state_dict(ck["model_state_dict"], strict=True)
        epochs.append(ck["epoch"])
    assert epochs == sorted(epochs) and epochs[-1] == 30
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == test.labels).float().mean())
    meta = json.loads((ASSETS / "meta.json").read_text())
    assert acc == pytest.approx(meta["test_accuracy_noisy"], abs=1e-5)
    assert acc >= 0.85


def test_shipped_labels():
    with open(ASSETS / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "noisy_label", "true_label", "is_mislabelled"]
    assert [int(r["index"]) for r in rows] == list(range(1437))
    noisy = np.array([int(r["noisy_label"]) for r in rows])
    true = np.array([int(r["true_label"]) for r in rows])
    mis = np.array([int(r["is_mislabelled"]) for r in rows])
    assert np.array_equal(mis == 1, noisy != true)
    assert 0.09 <= mis.mean() <= 0.11
    train = load_dataset("digits", split="train")
    assert np.array_equal(true, train.original_labels.numpy())
    # the override file gives the noisy labels, and the dataset keeps the truth
    with_override = load_dataset("digits", split="train", labels_override=ASSETS / "labels_override.csv")
    assert np.array_equal(with_override.labels.numpy(), noisy)
    assert np.array_equal(with_override.original_labels.numpy(), true)
    assert not bool(with_override.excluded.any())
    assert demo.load_demo_labels(ASSETS)["is_mislabelled"].sum() == mis.sum()


def test_shipped_workspace_toml():
    cfg = tomllib.loads((ASSETS / "workspace.toml").read_text())
    assert cfg["name"] == "digits-demo"
    assert cfg["model"] == {"factory": "tracin_core.audit.models:DigitsCNN", "final_fc_layer": "fc2"}
    assert cfg["checkpoints"]["paths"] == "checkpoint-*.pt"
    assert len(sorted(ASSETS.glob(cfg["checkpoints"]["paths"]))) == 6
    assert cfg["train"] == {"kind": "digits", "split": "train", "labels_override": "labels_override.csv"}
    assert cfg["test"] == {"kind": "digits", "split": "test"}
    assert cfg["loss"] == {"name": "cross_entropy", "reduction": "sum"}
    ds = load_dataset(base_dir=ASSETS, **cfg["train"])
    assert len(ds) == 1437
