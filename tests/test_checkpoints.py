"""load_checkpoint never unpickles code and names the file in every error."""
from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

from tracin_core import CheckpointError, TracInCPFast, load_checkpoint
from tracin_core.engine.checkpoints import fit_state_dict, load_into_model, read_checkpoint, resolve_checkpoints
from tests.reference import SmallCNN


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/tracin_pwned",))


def test_plain_nested_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    m = SmallCNN()
    sd = m.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"model_state_dict": sd, "learning_rate": 0.25, "epoch": 3}, tmp_path / "nested.pt")
    torch.save({"state_dict": sd}, tmp_path / "nested2.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for name in ["plain.pt", "nested.pt", "nested2.pt", "w.safetensors"]:
        got = load_checkpoint(tmp_path / name)
        assert set(got) == set(sd)
        assert all(torch.equal(got[k], sd[k]) for k in sd)
    _, info = read_checkpoint(tmp_path / "nested.pt")
    assert info.learning_rate == 0.25 and info.epoch == 3 and len(info.sha256) == 64
    # bytes (an upload) work too, with the given name in messages
    assert set(load_checkpoint((tmp_path / "plain.pt").read_bytes(), name="upload.pt")) == set(sd)


def test_learning_rate_from_optimizer_state(tmp_path):
    m = SmallCNN()
    opt = torch.optim.SGD(m.parameters(), lr=0.03, momentum=0.9)
    torch.save({"model_state_dict": m.state_dict(), "optimizer_state_dict": opt.state_dict()}, tmp_path / "c.pt")
    assert read_checkpoint(tmp_path / "c.pt")[1].learning_rate == pytest.approx(0.03)
    assert load_into_model(SmallCNN(), tmp_path / "c.pt") == pytest.approx(0.03)


def _bad_files(tmp_path):
    good = io.BytesIO()
    torch.save(SmallCNN().state_dict(), good)
    data = good.getvalue()
    files = {
        "random.pt": os.urandom(4096),
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "evil.pt": pickle.dumps({"w": Evil()}),
        "zeros.pt": b"",
        "text.safetensors": b"not a safetensors file at all",
    }
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\0" * 1024)
    files["zeros.pt"] = zbuf.getvalue()
    evil_zip = io.BytesIO()
    torch.save({"model_state_dict": SmallCNN().state_dict(), "hook": Evil()}, evil_zip)
    files["evil_in_torch.pt"] = evil_zip.getvalue()
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    return files


def test_bad_files_raise_checkpoint_error_naming_the_file(tmp_path):
    files = _bad_files(tmp_path)
    for name in files:
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(tmp_path / name)
        assert name in str(exc.value), str(exc.value)
    assert not os.path.exists("/tmp/tracin_pwned")
    with pytest.raises(CheckpointError, match="missing.pt: no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="Python objects"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="upload.bin"):
        load_checkpoint(b"\x00\x01garbage", name="upload.bin")
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_state_dict_that_does_not_fit(tmp_path):
    sd = SmallCNN().state_dict()
    wrong_shape = dict(sd, **{"fc2.weight": torch.zeros(7, 5)})
    torch.save(wrong_shape, tmp_path / "shape.pt")
    torch.save({k: v for k, v in sd.items() if k != "fc1.bias"}, tmp_path / "missing_key.pt")
    torch.save(dict(sd, extra=torch.zeros(1)), tmp_path / "extra.pt")
    torch.save({"not": "tensors"}, tmp_path / "strings.pt")
    with pytest.raises(CheckpointError, match=r"shape.pt.*fc2.weight.*\(7, 5\)"):
        load_into_model(SmallCNN(), tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"missing_key.pt.*missing keys.*fc1.bias"):
        load_into_model(SmallCNN(), tmp_path / "missing_key.pt")
    with pytest.raises(CheckpointError, match=r"extra.pt.*unexpected keys.*extra"):
        load_into_model(SmallCNN(), tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"strings.pt.*no tensors"):
        load_checkpoint(tmp_path / "strings.pt")
    # DataParallel prefixes are accepted
    fitted = fit_state_dict(SmallCNN(), {f"module.{k}": v for k, v in sd.items()}, "dp.pt")
    assert set(fitted) == set(sd)


def test_default_loader_in_tracin_reports_the_bad_file(tmp_path):
    from torch.utils.data import TensorDataset

    torch.save(SmallCNN().state_dict(), tmp_path / "a.pt")
    (tmp_path / "b.pt").write_bytes(os.urandom(100))
    ds = TensorDataset(torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,)))
    tr = TracInCPFast(SmallCNN(), "fc2", ds, str(tmp_path), loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=2)
    with pytest.raises(CheckpointError, match="b.pt"):
        tr.self_influence()


def test_resolve_checkpoints(tmp_path):
    for i in (10, 2, 1):
        torch.save({}, tmp_path / f"checkpoint-{i}.pt")
    names = [os.path.basename(p) for p in resolve_checkpoints(str(tmp_path))]
    assert names == ["checkpoint-1.pt", "checkpoint-2.pt", "checkpoint-10.pt"]
    assert len(resolve_checkpoints(str(tmp_path / "*.pt"))) == 3
    assert resolve_checkpoints(str(tmp_path / "checkpoint-2.pt")) == [str(tmp_path / "checkpoint-2.pt")]
    with pytest.raises(ValueError, match="checkpoints"):
        resolve_checkpoints(str(tmp_path / "nothing-*.pt"))
    with pytest.raises(ValueError, match="not a file"):
        resolve_checkpoints(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="empty"):
        resolve_checkpoints([])
