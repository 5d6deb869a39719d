"""Exact-scored top-k TracInCPFast influence through a small principal-direction index, for millions of rows.

TracInCPFast's score is a dot product: ``s(t, i) = Σ_c η_c (a_t·a_i)(δ_t·δ_i) = ⟨Φ_t, Φ_i⟩``
with ``Φ = concat_c √η_c vec(δ_c ⊗ a_c)`` (C·D·A numbers per example: 3,840 for six
checkpoints of a 64-input, 10-class final layer). The index keeps every training row's ``Φ``
reduced to its ``dim`` leading principal directions (uncentred: dot products are what
matter), found by a randomised SVD of ``sample`` random training rows: an (N, dim) float32
matrix (128 MB at a million rows, 32 directions). A query computes its own reduced ``Φ``,
takes the ``candidates`` training rows with the largest (or, for opponents, smallest)
reduced dot products by one matrix product, scores each exactly from the feature store
(:meth:`tracin_core.tracin.TracInCPFast.influence_of`) and keeps the best ``k``: the scores
are exact, only an example outside the candidates can be missing.

Why principal directions, searched exhaustively: per-example gradients live near a
low-dimensional subspace, which random projections ignore, and an exhaustive product over
32 numbers per row is cheap (milliseconds at a million rows) where tree indexes lose recall.
Measured on Fashion-MNIST: 32 directions keep 87% of ``Φ``'s energy; with 100 candidates,
every exact top-10 proponent of 30 test images (60,000 rows) and of 4 test images (150,000
shifted rows) was found, where an annoy "dot" index over the same 32 numbers returned only
56-89% of the true 100 nearest, and RandProj's annoy index over the full ``Φ`` 66%.
(Hand-written: a few lines of torch; no library offers this factored search.)

Built once from a complete store and saved beside it (``<store>/index-<settings>.npy``, the
reduced rows, memory-mapped when read back, and ``.npz``, the directions), reused when the
settings match.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .scoring import KMostInfluentialResults
from .store import LAYER_INPUT, OUTPUT_GRAD, array_name


@dataclass(frozen=True)
class IndexSettings:
    """``dim``: principal directions kept; ``candidates``: training rows per result row
    re-scored exactly; ``sample``: rows the directions are fitted on; ``seed``: the
    sample's and the SVD's."""

    dim: int = 32
    candidates: int = 100
    sample: int = 5_000
    seed: int = 0

    def tag(self) -> str:
        return f"d{self.dim}-s{self.sample}-r{self.seed}"


class InfluenceIndex:
    """Top-k TracInCPFast influence through a principal-direction index (module docstring).

    ``engine``: a :class:`~tracin_core.tracin.TracInCPFast` whose store is (or will be)
    complete; built on first use, saved beside an on-disk store.
    """

    def __init__(self, engine: Any, settings: Optional[IndexSettings] = None) -> None:
        from .tracin import TracInCPFast

        if not isinstance(engine, TracInCPFast) or type(engine).__name__ != "TracInCPFast":
            raise ValueError("engine must be a TracInCPFast (its store holds the final-layer a and δ)")
        self.engine = engine
        self.settings = settings or IndexSettings()
        if self.settings.dim < 1 or self.settings.candidates < 1 or self.settings.sample < 1:
            raise ValueError(f"settings: dim, candidates and sample must be positive; got {self.settings}")
        self.basis: Optional[Tensor] = None  # (C·D·A, dim)
        self.index: Optional[Tensor] = None  # (N, dim) reduced rows
        self.build_seconds = 0.0
        self.loaded = False  # True when read back from beside the store (not built)

    # ---------------------------------------------------------------- embeddings
    def _phi_blocks(self, feats: dict[str, Tensor]) -> list[Tensor]:
        """Per checkpoint, ``√η_c vec(δ ⊗ a)`` (n, D·A) of the given arrays."""
        w = self.engine._weights()
        out = []
        for c in range(len(w)):
            a = feats[array_name(c, LAYER_INPUT)].float()
            d = feats[array_name(c, OUTPUT_GRAD)].float()
            out.append((d.unsqueeze(2) * a.unsqueeze(1)).flatten(1) * float(w[c]) ** 0.5)
        return out

    def _rows(self, store, rows: Any) -> dict[str, Tensor]:
        names = [array_name(c, x) for c in range(len(self.engine._weights()))
                 for x in (LAYER_INPUT, OUTPUT_GRAD)]
        return {name: store.array(name)[rows] for name in names}

    def _reduce(self, feats: dict[str, Tensor]) -> Tensor:
        """(n, dim) coordinates of ``Φ`` in the principal directions."""
        assert self.basis is not None
        blocks = self._phi_blocks(feats)
        out = None
        off = 0
        for b in blocks:
            part = b @ self.basis[off:off + b.shape[1]]
            off += b.shape[1]
            out = part if out is None else out.add_(part)
        assert out is not None
        return out

    # ---------------------------------------------------------------- build / load
    def _paths(self, store) -> Optional[tuple[Path, Path]]:
        if store.path is None:
            return None
        tag = self.settings.tag()
        return store.path / f"index-{tag}.npy", store.path / f"index-{tag}.npz"

    def _load(self, store) -> bool:
        paths = self._paths(store)
        if paths is None or not (paths[0].is_file() and paths[1].is_file()):
            return False
        try:
            saved = np.load(paths[1], allow_pickle=False)
            if json.loads(str(saved["settings"])) != asdict(self.settings) or int(saved["n"]) != store.n:
                return False
            rows = np.load(paths[0], mmap_mode="r", allow_pickle=False)
            basis = torch.from_numpy(np.array(saved["basis"]))
        except (OSError, ValueError, KeyError):
            return False  # damaged: built again
        if rows.shape != (store.n, basis.shape[1]) or rows.dtype != np.float32:
            return False
        self.basis, self.index, self.loaded = basis, torch.from_numpy(np.array(rows)), True
        return True

    def build(self, block: int = 65_536) -> "InfluenceIndex":
        """Fit the directions and reduce every row (or read them back from beside the store)."""
        if self.index is not None:
            return self
        store = self.engine._train_store()
        if self._load(store):
            return self
        t0 = time.perf_counter()
        s, n = self.settings, store.n
        rng = np.random.default_rng(s.seed)
        sample = np.sort(rng.choice(n, size=min(s.sample, n), replace=False))
        phi = torch.cat(self._phi_blocks(self._rows(store, torch.from_numpy(sample))), dim=1)
        dim = min(s.dim, phi.shape[0], phi.shape[1])
        gen_state = torch.random.get_rng_state()  # svd_lowrank draws from the global generator:
        try:  # seeded here, the caller's state restored after
            torch.manual_seed(s.seed)
            _, _, v = torch.svd_lowrank(phi.double(), q=min(dim + 10, min(phi.shape)), niter=4)
        finally:
            torch.random.set_rng_state(gen_state)
        self.basis = v[:, :dim].float().contiguous()
        rows = torch.empty((n, dim), dtype=torch.float32)
        for start in range(0, n, block):
            stop = min(n, start + block)
            rows[start:stop] = self._reduce(self._rows(store, slice(start, stop)))
        self.index = rows
        self.build_seconds = time.perf_counter() - t0
        paths = self._paths(store)
        if paths is not None:
            for path, write in ((paths[0], lambda fh: np.save(fh, rows.numpy(), allow_pickle=False)),
                                (paths[1], lambda fh: np.savez(fh, basis=self.basis.numpy(),
                                                               settings=json.dumps(asdict(s)), n=n))):
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                with open(tmp, "wb") as fh:
                    write(fh)
                os.replace(tmp, path)
        return self

    # ---------------------------------------------------------------- queries
    def top_k(self, inputs: Any, k: int, proponents: bool = True) -> KMostInfluentialResults:
        """Top-``k`` proponents (or opponents) of each test example in ``inputs``, scored
        exactly; shapes ``(n_test, min(k, candidates found))``, most influential first."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if self.index is None:
            self.build()
        feats = self.engine._features(inputs, self.engine.test_loss_fn)
        q = self._reduce({name: t.cpu() for name, t in feats.items()})
        sign = 1.0 if proponents else -1.0
        want = min(max(k, self.settings.candidates), self.index.shape[0])
        with torch.no_grad():
            idx = (self.index @ (sign * q).T).T.topk(want, dim=1).indices  # (n_test, want)
        exact = self.engine.influence_of(inputs, idx)
        order = torch.argsort(-sign * exact, dim=1, stable=True)[:, :min(k, want)]
        return KMostInfluentialResults(torch.gather(idx, 1, order), torch.gather(exact, 1, order))
