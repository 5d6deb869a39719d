"""torchrun sharding of the training pass: the store equals a single process's, resumes
from every rank's done batches, and the engine classes work under a process group."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from tracin_core import TracInCPFast, TracInCPFastRandProj
from tracin_core.engine.distributed import sharded
from tracin_core.engine.store import FeatureStore, StoreMismatchError

ROOT = Path(__file__).resolve().parent.parent


def _store_dirs(cache: Path) -> dict[str, Path]:
    """method -> store folder, for the single workspace under ``cache``."""
    (ws,) = [p for p in cache.iterdir() if p.is_dir()]
    return {p.name.split("-")[0]: p for p in ws.iterdir() if p.is_dir()}


def _assert_same_store(a: Path, b: Path) -> None:
    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    assert ma["complete"] and mb["complete"]
    assert ma["key"] == mb["key"] and ma["arrays"] == mb["arrays"] and ma["n"] == mb["n"]
    assert sorted(ma["done"]) == sorted(mb["done"])
    names = sorted(p.name for p in a.glob("*.npy"))
    assert names == sorted(p.name for p in b.glob("*.npy")) and names
    for name in names:
        x, y = np.load(a / name), np.load(b / name)
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6 * (np.abs(x).max() + 1e-30), err_msg=name)
    assert not list(b.glob("done-rank*.json")), "rank files are folded into the manifest"


def test_torchrun_precompute_equals_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([sys.executable, "-m", "tracin_core", "precompute", "demo", "--cache-dir", str(one),
                         "--methods", "fast", "cp"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         "-m", "tracin_core", "precompute", "demo", "--cache-dir", str(two),
                         "--methods", "fast", "cp"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "(2 processes)" in r2.stdout
    s1, s2 = _store_dirs(one), _store_dirs(two)
    # the default ranking, computed after the pass by rank 0: the same from both stores
    r1_, r2_ = sorted(s1.pop("rankings").iterdir()), sorted(s2.pop("rankings").iterdir())
    assert [p.name for p in r1_] == [p.name for p in r2_]
    assert sorted(p.name.rsplit("-", 1)[-1].split(".", 1)[-1] for p in r1_) == ["json", "npy", "npz"]
    npy1, npy2 = (next(p for p in r if p.suffix == ".npy") for r in (r1_, r2_))
    np.testing.assert_allclose(np.load(npy2), np.load(npy1), rtol=1e-6, atol=1e-9)
    assert set(s1) == set(s2) == {"fast", "cp"}
    for m in s1:
        _assert_same_store(s1[m], s2[m])


def test_store_resumes_from_every_ranks_done_batches(tmp_path):
    rows = {"x": torch.arange(12.0).reshape(6, 2)}
    # rank 0 allocates and writes batch 0 (rows 0-1); rank 1 writes batch 1 (rows 2-3) and dies
    s0 = FeatureStore(tmp_path, key="k", n=6, rank=0)
    s0.write(0, 0, {"x": rows["x"][0:2]})
    s0.save_progress()
    s1 = FeatureStore(tmp_path, key="k", n=6, rank=1)
    assert s1.done == {0} and not s1.complete
    s1.write(1, 2, {"x": rows["x"][2:4]})
    s1.save_progress()
    assert 1 in json.loads((tmp_path / "done-rank1.json").read_text())["done"]
    assert json.loads((tmp_path / "manifest.json").read_text())["done"] == [0]  # rank 1 never writes it
    # a stale rank file from another computation is ignored
    (tmp_path / "done-rank7.json").write_text(json.dumps({"key": "other", "done": [2]}))
    # a later single-process run sees both ranks' batches and computes only batch 2
    s = FeatureStore(tmp_path, key="k", n=6)
    assert s.done == {0, 1}
    with pytest.raises(StoreMismatchError, match="1 of 3 batches were not computed"):
        s.finish(6, batches=3)
    s.write(2, 4, {"x": rows["x"][4:6]})
    s.finish(6, batches=3)
    assert not list(tmp_path.glob("done-rank*.json"))
    assert torch.equal(FeatureStore(tmp_path, key="k", n=6).array("x"), rows["x"])


# ------------------------------------------------------------------ engine under a process group
def _problem():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1300, 5, generator=g), torch.randint(0, 3, (1300,), generator=g)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    states = []
    for i in range(2):
        torch.manual_seed(10 + i)
        states.append({k: torch.randn_like(v) for k, v in model.state_dict().items()})

    def load(m, state):
        m.load_state_dict(state)
        return 0.1

    return model, TensorDataset(x, y), states, load, (x[:3], y[:3])


def _engine_results(cache: str):
    model, ds, states, load, test = _problem()
    loss = nn.CrossEntropyLoss(reduction="sum")
    fast = TracInCPFast(model, model[2], ds, states, load, loss, batch_size=64, cache_dir=cache)
    rp = TracInCPFastRandProj(model, model[2], ds, states, load, loss, batch_size=64, cache_dir=cache)
    return {"self": fast.self_influence(), "scores": fast.influence(test),
            "rp_idx": rp.influence(test, k=5).indices}


def _worker(rank: int, world: int, init: str, cache: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        with sharded():
            torch.save(_engine_results(cache), f"{out}-{rank}.pt")
        if rank == 0:  # outside sharded(): one rank alone computes its own pass, nobody waits
            model, ds, states, load, _test = _problem()
            alone = TracInCPFast(model, model[2], ds, states, load, nn.CrossEntropyLoss(reduction="sum"))
            torch.save(alone.self_influence(), f"{out}-alone.pt")
    finally:
        dist.destroy_process_group()


def test_engine_classes_under_a_process_group(tmp_path):
    import torch.multiprocessing as mp

    single = _engine_results(str(tmp_path / "single"))
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "shared"), out), nprocs=2)
    for rank in range(2):
        got = torch.load(f"{out}-{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["self"], single["self"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["scores"], single["scores"], rtol=1e-5, atol=1e-6)
        assert torch.equal(got["rp_idx"], single["rp_idx"])
    torch.testing.assert_close(torch.load(f"{out}-alone.pt", weights_only=True), single["self"], rtol=1e-5, atol=1e-6)
    # the shared store was written by both ranks: 1300 rows in batches of 512 -> 3 batches
    (fast_dir,) = (tmp_path / "shared").glob("fast-*")
    info = json.loads((fast_dir / "manifest.json").read_text())
    assert info["complete"] and info["done"] == [0, 1, 2] and info["n"] == 1300


def test_sharded_pass_needs_a_cache_dir(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_no_cache_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "msg")), nprocs=2)
    for rank in range(2):
        assert "needs cache_dir" in Path(f"{tmp_path / 'msg'}-{rank}.txt").read_text()


def _no_cache_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, ds, states, load, _test = _problem()
        try:
            with sharded():
                TracInCPFast(model, model[2], ds, states, load, nn.CrossEntropyLoss(reduction="sum")).self_influence()
            msg = "no error"
        except ValueError as exc:
            msg = str(exc)
        Path(f"{out}-{rank}.txt").write_text(msg)
    finally:
        dist.destroy_process_group()
