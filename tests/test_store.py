"""The on-disk feature store: reuse, resume after a crash, keyed by what it was computed from."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tracin_core import TracInCP, TracInCPFast
from tracin_core.engine.store import MANIFEST
from tests.reference import SmallCNN, make_checkpoints


class CountingDataset(Dataset):
    """Counts item reads; can fail once at a given index (a crash mid-pass)."""

    def __init__(self, n=30, fail_at=None):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 6, 6, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.reads = 0
        self.fail_at = fail_at

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self.fail_at is not None and i == self.fail_at:
            self.fail_at = None
            raise RuntimeError("simulated crash")
        self.reads += 1
        return self.x[i], self.y[i]


@pytest.fixture()
def ckpts(tmp_path):
    return make_checkpoints(SmallCNN, tmp_path / "ckpts", 2, torch.float32)


def _fast(ds, ckpts, cache):
    return TracInCPFast(SmallCNN(), "fc2", ds, ckpts, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                        batch_size=4, cache_dir=cache)


def test_store_is_reused_by_a_new_instance(tmp_path, ckpts):
    ds = CountingDataset()
    a = _fast(ds, ckpts, tmp_path / "cache")
    s1 = a.self_influence()
    reads_after_first = ds.reads
    assert reads_after_first >= len(ds)
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1
    manifest = json.loads((folders[0] / MANIFEST).read_text())
    assert manifest["complete"] and manifest["n"] == 30
    assert manifest["arrays"]["c0/a"] == 5 and manifest["arrays"]["c1/d"] == 3
    b = _fast(ds, ckpts, tmp_path / "cache")
    s2 = b.self_influence()
    assert torch.equal(s1, s2)
    # only the few items hashed for the store key were read: no second pass
    assert ds.reads - reads_after_first <= 6
    test = (ds.x[:3], ds.y[:3])
    assert torch.allclose(a.influence(test), b.influence(test))


def test_interrupted_pass_resumes(tmp_path, ckpts, monkeypatch):
    import tracin_core.engine.tracin

    monkeypatch.setattr(tracin_core.engine.tracin, "PASS_BATCH", 4)  # several batches for 30 items
    reference = _fast(CountingDataset(), ckpts, None).self_influence()
    ds = CountingDataset(fail_at=17)
    tr = _fast(ds, ckpts, tmp_path / "cache")
    with pytest.raises(RuntimeError, match="simulated crash"):
        tr.self_influence()
    folder = next((tmp_path / "cache").iterdir())
    manifest = json.loads((folder / MANIFEST).read_text())
    assert not manifest["complete"]
    ds.reads = 0
    again = _fast(ds, ckpts, tmp_path / "cache")
    assert torch.allclose(again.self_influence(), reference)
    # batches 0..3 (items 0..15) were done before the crash and are not read again
    assert ds.reads < len(ds) - 8


def test_changed_checkpoint_gives_a_new_store(tmp_path, ckpts):
    ds = CountingDataset()
    first = _fast(ds, ckpts, tmp_path / "cache").self_influence()
    torch.manual_seed(99)
    torch.save({"model_state_dict": SmallCNN().state_dict()}, ckpts[0])
    second = _fast(ds, ckpts, tmp_path / "cache").self_influence()
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert not torch.allclose(first, second)


def test_tracincp_cache_dir(tmp_path, ckpts):
    ds = CountingDataset(n=12)
    a = TracInCP(SmallCNN(), ds, ckpts, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=5,
                 cache_dir=tmp_path / "cp")
    b = TracInCP(SmallCNN(), ds, ckpts, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=5)
    test = (ds.x[:2], ds.y[:2])
    assert torch.allclose(a.influence(test), b.influence(test), atol=1e-6)
    assert torch.allclose(a.self_influence(), b.self_influence())


def test_randproj_index_is_persisted_next_to_the_store(tmp_path, ckpts):
    from tracin_core import TracInCPFastRandProj

    ds = CountingDataset()
    kw = dict(loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=4, projection_dim=4, cache_dir=tmp_path / "rp")
    a = TracInCPFastRandProj(SmallCNN(), "fc2", ds, ckpts, **kw)
    folder = next((tmp_path / "rp").iterdir())
    assert list(folder.glob("annoy-*.idx"))
    b = TracInCPFastRandProj(SmallCNN(), "fc2", ds, ckpts, **kw)
    test = (ds.x[:3], ds.y[:3])
    ra, rb = a.influence(test, k=5), b.influence(test, k=5)
    assert torch.equal(ra.indices, rb.indices) and torch.allclose(ra.influence_scores, rb.influence_scores)


def test_randproj_reuses_the_saved_index(tmp_path, ckpts, monkeypatch):
    """Counters on AnnoyNearestNeighbors: the second instance loads the saved index and
    never builds one; other settings (more trees) build and save their own."""
    from tracin_core import AnnoyNearestNeighbors, TracInCPFastRandProj

    counts = {"setup": 0, "load": 0}
    real_setup, real_load = AnnoyNearestNeighbors.setup, AnnoyNearestNeighbors.load

    def setup(self, data):
        counts["setup"] += 1
        return real_setup(self, data)

    def load(self, path, dim):
        counts["load"] += 1
        return real_load(self, path, dim)

    monkeypatch.setattr(AnnoyNearestNeighbors, "setup", setup)
    monkeypatch.setattr(AnnoyNearestNeighbors, "load", load)
    ds = CountingDataset()
    kw = dict(loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=4, projection_dim=4,
              cache_dir=tmp_path / "rp")
    test = (ds.x[:3], ds.y[:3])
    a = TracInCPFastRandProj(SmallCNN(), "fc2", ds, ckpts, **kw)
    ra = a.influence(test, k=5)
    assert counts == {"setup": 1, "load": 0}
    b = TracInCPFastRandProj(SmallCNN(), "fc2", ds, ckpts, **kw)
    rb = b.influence(test, k=5)
    assert counts == {"setup": 1, "load": 1}  # reused: loaded, not built
    assert b.nearest_neighbors.size == len(ds)
    assert torch.equal(ra.indices, rb.indices)
    c = TracInCPFastRandProj(SmallCNN(), "fc2", ds, ckpts,
                             nearest_neighbors=AnnoyNearestNeighbors(num_trees=3), **kw)
    c.influence(test, k=5)
    assert counts == {"setup": 2, "load": 1}  # another index file: built once
    folder = next((tmp_path / "rp").iterdir())
    assert sorted(p.name for p in folder.glob("annoy-*.idx")) == ["annoy-10-0.idx",
                                                                  "annoy-3-0.idx"]


@pytest.mark.parametrize("on_disk", [False, True])
def test_joined_arrays_read_back_side_by_side(tmp_path, on_disk):
    """``joined`` names share one in-memory buffer (no copy on read); on disk they are concatenated."""
    from tracin_core.engine.store import FeatureStore

    g = torch.Generator().manual_seed(0)
    rows = {"c0/e": torch.randn(10, 3, generator=g), "c1/e": torch.randn(10, 2, generator=g),
            "c0/self": torch.randn(10, 1, generator=g)}
    store = FeatureStore(tmp_path / "s" if on_disk else None, key="k", n=10, joined=["c0/e", "c1/e"])
    for b, start in enumerate(range(0, 10, 4)):
        store.write(b, start, {k: v[start : start + 4] for k, v in rows.items()})
    store.finish(10)
    both = store.joined_array(["c0/e", "c1/e"])
    torch.testing.assert_close(both, torch.cat([rows["c0/e"], rows["c1/e"]], 1), rtol=0, atol=0)
    torch.testing.assert_close(store.array("c1/e"), rows["c1/e"], rtol=0, atol=0)
    torch.testing.assert_close(store.array("c0/self"), rows["c0/self"], rtol=0, atol=0)
    shares = both.data_ptr() == store.array("c0/e").data_ptr()
    assert shares is (not on_disk)
    assert store.joined_array(["c1/e", "c0/e"]).shape == (10, 5)  # another order: concatenated


def test_named_accessors_read_what_the_pass_wrote(tmp_path):
    """The store's accessors (outputs, self_terms, layer_inputs, output_grads) return the
    arrays a TracInCPFast pass wrote under array_name(c, part), for every checkpoint."""
    from tracin_core.engine.store import LAYER_INPUT, OUTPUT_GRAD, OUTPUTS, SELF, array_name

    ckpts = make_checkpoints(SmallCNN, tmp_path, 2, dtype=torch.float32)
    ds = CountingDataset(n=12)
    fast = TracInCPFast(SmallCNN(), "fc2", ds, ckpts, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                        batch_size=5, store_outputs=True)
    calls: list[tuple[int, object]] = []
    store = fast.train_store(progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (12, 12)  # the pass reported its examples
    n_calls = len(calls)
    assert fast.train_store(progress=lambda done, total: calls.append((done, total))) is store
    assert len(calls) == n_calls  # a later call reads the store: no second pass
    assert array_name(1, SELF) == "c1/self"
    for c in range(2):
        assert store.outputs(c).shape == (12, 3)
        assert store.self_terms(c).shape == (12,) and bool((store.self_terms(c) >= 0).all())
        for get, part in ((store.outputs, OUTPUTS), (store.layer_inputs, LAYER_INPUT),
                          (store.output_grads, OUTPUT_GRAD)):
            assert torch.equal(get(c), store.array(array_name(c, part)))
    # the self-terms weighted by the (unit) learning rates are the engine's self-influence
    total = store.self_terms(0) + store.self_terms(1)
    torch.testing.assert_close(fast.self_influence().to(total.dtype), total)
    with pytest.raises(KeyError, match="no array 'c0/e'"):
        store.embeddings(0)


def test_input_sketch_is_stored_once_and_resumes(tmp_path, ckpts, monkeypatch):
    """``store_input_sketch``: the pass keeps each example's input sketch under checkpoint 0
    only (it does not depend on the checkpoint), equal to input_sketch of the data; a crashed
    pass resumes it; the option is part of the store key, and a store made without it keeps
    the key it had before the option existed."""
    import tracin_core.engine.tracin
    from tracin_core.engine.featurize import input_sketch
    from tracin_core.engine.store import INPUT_SKETCH, array_name

    monkeypatch.setattr(tracin_core.engine.tracin, "PASS_BATCH", 4)
    kw = dict(loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=4, store_outputs=True)
    plain = TracInCPFast(SmallCNN(), "fc2", CountingDataset(), ckpts, **kw)
    assert plain.train_store().input_sketch() is None
    assert "input_sketch" not in plain._config()
    ds = CountingDataset(fail_at=17)
    fast = TracInCPFast(SmallCNN(), "fc2", ds, ckpts, cache_dir=tmp_path / "c", store_input_sketch=True, **kw)
    assert fast._store_key() != plain._store_key()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fast.train_store()
    again = TracInCPFast(SmallCNN(), "fc2", ds, ckpts, cache_dir=tmp_path / "c", store_input_sketch=True, **kw)
    store = again.train_store()
    want = input_sketch((ds.x,))
    assert want.shape == (30, 36)  # 36 pixels: under SKETCH_DIM, kept as they are
    assert torch.equal(store.input_sketch(), want) and torch.equal(want, ds.x.reshape(30, -1))
    assert array_name(0, INPUT_SKETCH) in store.names() and array_name(1, INPUT_SKETCH) not in store.names()
    # the rest of the store is what a store without the sketch holds
    for c in range(2):
        assert torch.equal(store.layer_inputs(c), plain.train_store().layer_inputs(c))
        assert torch.equal(store.self_terms(c), plain.train_store().self_terms(c))


def test_input_sketch_shapes():
    """input_sketch: narrow float inputs as they are; wide ones projected to SKETCH_DIM by the
    fixed projection (the same in every call); large images pooled first; several inputs
    joined; nothing to sketch without a floating-point input."""
    from tracin_core.engine.featurize import SKETCH_DIM, SKETCH_POOL_SIDE, input_sketch, sketch_projection

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 28, 28, generator=g)
    got = input_sketch((x,))
    assert got.shape == (5, SKETCH_DIM) and got.dtype == torch.float32
    assert torch.allclose(got, x.reshape(5, -1) @ sketch_projection(784), atol=1e-5)
    assert torch.equal(input_sketch((x,)), got)  # deterministic
    assert torch.equal(sketch_projection(784), torch.randn(784, SKETCH_DIM, generator=torch.Generator().manual_seed(0))
                       / SKETCH_DIM ** 0.5)
    # a random projection keeps distances up to a small distortion (here within 35%)
    d_in = torch.cdist(x.reshape(5, -1), x.reshape(5, -1))
    d_out = torch.cdist(got, got)
    off = ~torch.eye(5, dtype=torch.bool)
    assert ((d_out[off] / d_in[off] - 1).abs() < 0.35).all()
    big = torch.randn(2, 3, 64, 64, generator=g)
    pooled = torch.nn.functional.adaptive_avg_pool2d(big, SKETCH_POOL_SIDE).reshape(2, -1)
    assert torch.allclose(input_sketch((big,)), pooled @ sketch_projection(3 * SKETCH_POOL_SIDE ** 2), atol=1e-5)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 2, dtype=torch.float64, generator=g)
    assert torch.equal(input_sketch((a, b)), torch.cat([a, b.float()], dim=1))
    assert input_sketch((torch.randint(0, 9, (4, 7)),)) is None  # token ids: nothing to sketch
    assert torch.equal(input_sketch((torch.randint(0, 9, (4, 7)), a)), a)
    assert input_sketch((a, torch.randn(3, 2))) is None  # no common batch dimension


# ----------------------------------------------------------------- hard kill mid-pass
ROOT = Path(__file__).resolve().parents[1]


class SlowLinear(nn.Module):
    """A workspace model for the SIGKILL test (factory ``tests.test_store:SlowLinear``):
    each forward sleeps ``$SLOW_FORWARD_S`` seconds and, with ``$FORWARD_LOG``, appends
    its batch size to that file."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        delay = float(os.environ.get("SLOW_FORWARD_S", "0"))
        if delay:
            time.sleep(delay)
        log = os.environ.get("FORWARD_LOG")
        if log:
            with open(log, "a") as fh:
                fh.write(f"{x.shape[0]}\n")
        return self.fc(x)


def _precompute(workspace, cache, **env):
    return subprocess.Popen(
        [sys.executable, "-m", "tracin_core", "precompute", str(workspace), "--cache-dir", str(cache),
         "--methods", "fast"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _store_folder(cache: Path) -> Path:
    (ws,) = [p for p in cache.iterdir() if p.is_dir()]
    (store,) = [p for p in ws.iterdir() if p.is_dir() and p.name.startswith("fast")]
    return store


def test_precompute_killed_with_sigkill_resumes_to_the_same_store(tmp_path):
    """``precompute`` SIGKILLed mid-pass (no Python cleanup runs), then run again: it
    computes only the batches the manifest does not list, and the store equals one made
    by an uninterrupted run."""
    n_batches, batch = 12, 512  # the pass decodes PASS_BATCH = 512 examples at a time
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * batch, 5, generator=g)
    y = torch.randint(0, 3, (n_batches * batch,), generator=g)
    torch.save({"x": x, "y": y}, tmp_path / "train.pt")
    for i in range(2):
        torch.manual_seed(i)
        torch.save({"model_state_dict": SlowLinear().state_dict(), "learning_rate": 0.5 + i},
                   tmp_path / f"ck{i}.pt")
    ws = tmp_path / "ws.toml"
    ws.write_text(
        'name = "killed"\n[model]\nfactory = "tests.test_store:SlowLinear"\nfinal_fc_layer = "fc"\n'
        '[checkpoints]\npaths = "ck*.pt"\n[train]\nkind = "tensors"\npath = "train.pt"\n'
        '[loss]\nname = "cross_entropy"\nreduction = "sum"\n')

    killed = tmp_path / "killed"
    proc = _precompute(ws, killed, SLOW_FORWARD_S="0.4")
    done_before: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            manifests = list(killed.glob("*/fast*/manifest.json"))
            if manifests:
                try:
                    manifest = json.loads(manifests[0].read_text())
                except (OSError, ValueError):
                    manifest = {}
                if manifest.get("done") and not manifest.get("complete"):
                    done_before = sorted(manifest["done"])
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the pass ended before it could be killed:\n" + proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert done_before and len(done_before) < n_batches
    manifest = json.loads((_store_folder(killed) / "manifest.json").read_text())
    assert not manifest["complete"] and set(done_before) <= set(manifest["done"])
    done_at_kill = set(manifest["done"])

    log = tmp_path / "forwards.log"
    resumed = _precompute(ws, killed, FORWARD_LOG=str(log))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    clean = _precompute(ws, tmp_path / "clean")
    out, err = clean.communicate(timeout=600)
    assert clean.returncode == 0, err[-3000:]

    # the resumed run forwarded only the batches the manifest did not list
    forwarded = sum(int(line) for line in log.read_text().split())
    assert forwarded == 2 * batch * (n_batches - len(done_at_kill))  # 2 checkpoints
    a, b = _store_folder(killed), _store_folder(tmp_path / "clean")
    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    assert ma["complete"] and mb["complete"] and ma["key"] == mb["key"]
    assert sorted(ma["done"]) == sorted(mb["done"]) == list(range(n_batches))
    names = sorted(p.name for p in a.glob("*.npy"))
    assert names and names == sorted(p.name for p in b.glob("*.npy"))
    for name in names:
        np.testing.assert_array_equal(np.load(a / name), np.load(b / name), err_msg=name)


def test_written_pages_are_released_and_the_rows_kept(tmp_path, monkeypatch):
    """While a pass writes an on-disk store, flushed pages are unmapped from the process
    (resident memory flat in N); the rows stay in the file, and a resumed or reopened
    store reads them back. A complete (copy-on-write) store is never released."""
    from tracin_core.engine import store as st

    released = []
    real = st._release_pages
    monkeypatch.setattr(st, "_release_pages", lambda m: released.append(m.filename) or real(m))
    rows = {"a": torch.randn(10, 3), "b": torch.randn(10, 1)}
    s = st.FeatureStore(tmp_path, key="k", n=10)
    for b in range(5):
        s._last_flush = float("-inf")  # flush (and release) after every batch
        s.write(b, 2 * b, {k: v[2 * b:2 * b + 2] for k, v in rows.items()})
        assert len(released) == 2 * (b + 1)  # both arrays, every flush
        assert torch.equal(torch.from_numpy(np.array(s._maps["a"][:2 * b + 2])), rows["a"][:2 * b + 2])
    s.finish(10, batches=5)
    count = len(released)
    assert all(torch.equal(s.array(k), v) for k, v in rows.items())
    again = st.FeatureStore(tmp_path, key="k", n=10)
    assert again.complete and all(torch.equal(again.array(k), v) for k, v in rows.items())
    again.save_progress()
    assert len(released) == count  # complete: nothing released


@pytest.mark.parametrize("projection_dim", [4, None])
@pytest.mark.parametrize("outputs", ["sketch", True, False])
def test_randproj_embeddings_derived_from_a_fast_store(tmp_path, ckpts, projection_dim, outputs):
    """With a complete TracInCPFast store of the same settings in ``cache_dir``, RandProj
    computes its embeddings from the stored ``a`` and ``δ``: the data set is read only
    for the projections' sizes (one batch), and the embeddings, the index's answers and
    the scores are those of a pass."""
    from tracin_core import TracInCPFast, TracInCPFastRandProj

    kw = dict(loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=4)
    ds = CountingDataset(n=30)
    TracInCPFast(SmallCNN(), "fc2", ds, ckpts, cache_dir=tmp_path / "c", store_outputs=bool(outputs),
                 store_input_sketch=outputs == "sketch", **kw).self_influence()
    ds.reads = 0
    derived = TracInCPFastRandProj(SmallCNN(), "fc2", ds, ckpts, projection_dim=projection_dim,
                                   cache_dir=tmp_path / "c", **kw)
    # no pass over the 30 examples: 3 items per store key checked (its own, up to three Fast
    # ones), one batch of 4 for the projections' sizes
    assert ds.reads <= 12 + (4 if projection_dim else 0)
    passed = TracInCPFastRandProj(SmallCNN(), "fc2", CountingDataset(n=30), ckpts, projection_dim=projection_dim,
                                  cache_dir=tmp_path / "other", **kw)
    assert torch.allclose(derived._train_embedding, passed._train_embedding, rtol=1e-6, atol=1e-7)
    test = (ds.x[:3], ds.y[:3])
    assert torch.allclose(derived.influence(test), passed.influence(test), rtol=1e-5, atol=1e-6)
    assert torch.equal(derived.influence(test, k=5).indices, passed.influence(test, k=5).indices)
    # another loss is another Fast store: nothing to derive from, a pass
    ds.reads = 0
    TracInCPFastRandProj(SmallCNN(), "fc2", ds, ckpts, projection_dim=projection_dim, cache_dir=tmp_path / "c",
                         loss_fn=nn.CrossEntropyLoss(reduction="mean"), batch_size=4)
    assert ds.reads >= 30
