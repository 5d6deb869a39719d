"""Top-k through the principal-direction index: exact scores, the exact top-k found, the
index saved beside the store and reused, settings that change it, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tracin_core import Workspace
from tracin_core.engine.influence_index import IndexSettings, InfluenceIndex


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    ws = Workspace.demo(cache_dir=tmp_path_factory.mktemp("idx_cache"))
    ws.precompute(["fast"])
    return ws


def _batch(ws, rows):
    return (torch.stack([ws.test[i][0] for i in rows]), torch.tensor([int(ws.test[i][1]) for i in rows]))


def test_index_finds_the_exact_top_k_with_exact_scores(demo):
    fast = demo._engine("fast")
    batch = _batch(demo, range(12))
    full = fast.influence(batch)
    idx = InfluenceIndex(fast, IndexSettings(dim=16, candidates=60)).build()
    assert idx.basis.shape == (6 * 10 * fast._train_store().array("c0/a").shape[1], 16)
    for proponents in (True, False):
        got = idx.top_k(batch, 10, proponents)
        want = fast.influence(batch, k=10, proponents=proponents)
        # every score is the exact one of that training example
        assert torch.allclose(got.influence_scores, torch.gather(full, 1, got.indices), rtol=1e-5, atol=1e-5)
        recall = np.mean([len(set(g.tolist()) & set(w.tolist())) / 10
                          for g, w in zip(got.indices, want.indices)])
        assert recall >= 0.95, recall
        s = got.influence_scores
        assert bool(((s[:, :-1] >= s[:, 1:]) if proponents else (s[:, :-1] <= s[:, 1:])).all())


def test_index_is_saved_beside_the_store_and_reused(demo):
    fast = demo._engine("fast")
    settings = IndexSettings(dim=8, candidates=40)
    first = InfluenceIndex(fast, settings).build()
    files = sorted(p.name for p in fast._train_store().path.glob(f"index-{settings.tag()}.*"))
    assert files == [f"index-{settings.tag()}.npy", f"index-{settings.tag()}.npz"]
    assert not first.loaded
    again = InfluenceIndex(fast, settings).build()
    assert again.loaded and torch.equal(again.basis, first.basis)  # read back, not built
    batch = _batch(demo, [3, 4])
    assert torch.equal(again.top_k(batch, 5).indices, first.top_k(batch, 5).indices)
    assert not InfluenceIndex(fast, IndexSettings(dim=6, candidates=40)).build().loaded  # other settings
    (fast._train_store().path / f"index-{settings.tag()}.npz").write_bytes(b"damaged")
    rebuilt = InfluenceIndex(fast, settings).build()  # damaged: built again, not trusted
    assert not rebuilt.loaded and torch.equal(rebuilt.basis, first.basis)  # and the same (seeded)
    assert torch.equal(rebuilt.index, first.index) and first.index.shape == (len(demo.train), 8)


def test_workspace_and_cli_method_index(demo, tmp_path):
    res = demo.influence(5, k=6, method="index", dim=16, candidates=60)
    exact = demo.influence(5, k=6, method="fast")
    assert list(res.proponents["index"]) == list(exact.proponents["index"])
    assert np.allclose(res.proponents["score"], exact.proponents["score"], rtol=1e-5)
    with pytest.raises(ValueError, match="TracInCPFast"):
        InfluenceIndex(demo._engine("randproj", projection_dim=16))
    with pytest.raises(ValueError, match="positive"):
        InfluenceIndex(demo._engine("fast"), IndexSettings(dim=0))
    with pytest.raises(ValueError, match="k must be a positive int"):
        InfluenceIndex(demo._engine("fast")).top_k(_batch(demo, [1]), 0)
