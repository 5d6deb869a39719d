"""Largest-dot-product search with annoy (Captum's ``AnnoyNearestNeighbors`` interface)."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Optional

import numpy as np
import torch
from torch import Tensor


class NearestNeighbors(ABC):
    """Stored vectors; queries return the stored rows with the largest dot products."""

    @abstractmethod
    def setup(self, data: Tensor) -> None:
        """Index ``data`` of shape (N, *) (rows flattened)."""

    @abstractmethod
    def get_nearest_neighbors(self, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``query`` (n, *) -> ``(indices (n, k) long, dot products (n, k))``, largest first."""


class AnnoyNearestNeighbors(NearestNeighbors):
    """Annoy "dot" index. ``num_trees``: more trees, better recall, slower build.

    ``search_k`` (annoy's nodes inspected per query; -1 = annoy's default) and
    ``n_jobs`` (threads used to build; -1 = all cores) are extras over Captum.
    """

    def __init__(self, num_trees: int = 10, search_k: int = -1, n_jobs: int = -1, seed: int = 0) -> None:
        try:
            import annoy  # noqa: F401
        except ImportError as exc:  # pragma: no cover - annoy is a requirement
            raise ValueError("AnnoyNearestNeighbors needs the annoy package: pip install annoy") from exc
        if not isinstance(num_trees, int) or num_trees < 1:
            raise ValueError(f"num_trees must be a positive int, got {num_trees!r}")
        self.num_trees = num_trees
        self.search_k = search_k
        self.n_jobs = n_jobs
        self.seed = seed
        self.knn_index = None
        self.dim: Optional[int] = None
        self.size = 0

    def setup(self, data: Tensor) -> None:
        import annoy

        arr = np.ascontiguousarray(data.reshape(len(data), -1).detach().cpu().numpy(), dtype=np.float32)
        self.dim = arr.shape[1]
        index = annoy.AnnoyIndex(self.dim, "dot")
        index.set_seed(self.seed)
        for i in range(arr.shape[0]):
            index.add_item(i, arr[i])
        index.build(self.num_trees, n_jobs=self.n_jobs)
        self.knn_index = index
        self.size = arr.shape[0]

    def get_nearest_neighbors(self, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if self.knn_index is None:
            raise RuntimeError("call setup() before get_nearest_neighbors()")
        q = query.reshape(len(query), -1).detach().cpu().numpy().astype(np.float32)
        k = min(int(k), self.size)
        idx, dist = [], []
        for row in q:
            i, d = self.knn_index.get_nns_by_vector(row, k, search_k=self.search_k, include_distances=True)
            search_k = self.search_k if self.search_k > 0 else k * self.num_trees
            while len(i) < k and search_k < self.size * self.num_trees:
                search_k *= 8  # too few leaves visited: look wider
                i, d = self.knn_index.get_nns_by_vector(row, k, search_k=search_k, include_distances=True)
            idx.append(i)
            dist.append(d)
        k = min(len(r) for r in idx)  # rectangular result (annoy may still return fewer)
        idx = [r[:k] for r in idx]
        dist = [r[:k] for r in dist]
        return torch.tensor(idx, dtype=torch.long), torch.tensor(dist, dtype=torch.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Persist the index (annoy's own file format, memory-mapped on load)."""
        if self.knn_index is None:
            raise RuntimeError("nothing to save: call setup() first")
        self.knn_index.save(os.fspath(path))

    def load(self, path: str | os.PathLike, dim: int) -> None:
        import annoy

        index = annoy.AnnoyIndex(dim, "dot")
        if not index.load(os.fspath(path)):
            raise ValueError(f"{path}: not an annoy index")
        self.knn_index, self.dim, self.size = index, dim, index.get_n_items()
