"""The feature store: per-example arrays for the training set, in memory or on disk.

On disk (``path`` given) every array is a memory-mapped ``.npy`` file beside a JSON
manifest holding the store's key (what it was computed from), shapes, dtype and a
done-mask of batches, so an interrupted run resumes where it stopped and a finished
one is reused by any later process with the same key.

Several processes can fill one store (``torchrun``: see :mod:`tracin_core.engine.distributed`):
each writes its own batches' rows into the shared memory-mapped files; rank 0 owns the
manifest and the other ranks record their done batches in ``done-rank{r}.json``, which
rank 0 folds into the manifest when every rank has finished (:meth:`FeatureStore.finish`).
"""
from __future__ import annotations

import json
import mmap
import os
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

MANIFEST = "manifest.json"
RANK_DONE = "done-rank{rank}.json"
FORMAT_VERSION = 1

_NP_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16"}

# ---------------------------------------------------------------- array names
# Every array is named "c{checkpoint}/{part}" (featurize.run_pass writes them). The parts a
# reader outside the engine needs have a name here and an accessor on FeatureStore; the
# featurizer-specific parts ("l{i}_a", "l{i}_d", "g" of the whole-model featurizer) are
# read only through a featurizer's ``terms``.
#: final_fc_layer's input per example, (N, A) (with a column of ones for a bias): TracInCPFast
LAYER_INPUT = "a"
#: ∂loss/∂(model output) per example, (N, K): TracInCPFast
OUTPUT_GRAD = "d"
#: the model's outputs (logits), (N, K): TracInCPFast with keep_outputs
OUTPUTS = "o"
#: the projected gradient, (N, P): TracInCPFastRandProj
EMBEDDING = "e"
#: the unweighted squared gradient norm ⟨∇ℓ_i, ∇ℓ_i⟩, (N, 1): every engine
SELF = "self"
#: a sketch of each example's model inputs, (N, D) (:func:`tracin_core.engine.featurize.input_sketch`):
#: TracInCPFast with store_input_sketch; one copy, stored under checkpoint 0 (it does not
#: depend on the checkpoint)
INPUT_SKETCH = "x"


def array_name(checkpoint: int, part: str) -> str:
    """The store name of ``part`` (one of the names above, or a featurizer's array
    name) at checkpoint index ``checkpoint`` (0-based): ``"c{checkpoint}/{part}"``."""
    return f"c{int(checkpoint)}/{part}"



def _fname(name: str) -> str:
    return name.replace("/", "__") + ".npy"


class StoreMismatchError(RuntimeError):
    """A store folder holds data computed from something else."""


class FeatureStore:
    """Named arrays with one row per training example.

    ``write(batch_index, start, arrays)`` during the pass, ``finish()`` at the end,
    then ``rows(name, start, stop)`` / ``array(name)`` read them.
    """

    def __init__(
        self,
        path: Optional[os.PathLike | str] = None,
        key: str = "",
        n: Optional[int] = None,
        meta: Optional[dict[str, Any]] = None,
        keep: Optional[set[str]] = None,
        rank: Optional[int] = None,
        joined: Optional[Sequence[str]] = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.rank = rank  # a writer among several (torchrun); None: the only writer
        self.key = key
        self.n = n
        self.meta = dict(meta or {})
        self.keep = keep  # names to keep; None = all
        self.dtype: Optional[torch.dtype] = None
        self.dims: dict[str, int] = {}
        self.done: set[int] = set()
        self.complete = False
        self._mem: dict[str, list[tuple[int, Tensor]]] = {}
        self._arrays: dict[str, Tensor] = {}
        self._maps: dict[str, np.memmap] = {}
        self._pre: dict[str, Tensor] = {}
        # names laid side by side in one in-memory buffer (read back whole by joined_array)
        self.joined = list(joined or [])
        self._joined_buf: Optional[Tensor] = None
        self._last_flush = 0.0
        if self.path is not None:
            self._open_existing()

    # ---------------------------------------------------------------- disk
    def _manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "key": self.key,
            "n": self.n,
            "dtype": _NP_DTYPES.get(self.dtype, "float32") if self.dtype else None,
            "arrays": self.dims,
            "done": sorted(self.done),
            "complete": self.complete,
            "meta": self.meta,
        }

    def _write_manifest(self) -> None:
        assert self.path is not None
        if self.rank:  # ranks > 0 never touch the manifest: their own done-file only
            _write_json(self.path / RANK_DONE.format(rank=self.rank), {"key": self.key, "done": sorted(self.done)})
            return
        _write_json(self.path / MANIFEST, self._manifest())

    def _rank_files(self) -> list[Path]:
        assert self.path is not None
        return sorted(self.path.glob(RANK_DONE.format(rank="*")))

    def _rank_done(self) -> set[int]:
        """Batches other ranks recorded as done (their files with this store's key)."""
        done: set[int] = set()
        for f in self._rank_files():
            try:
                info = json.loads(f.read_text())
            except (OSError, ValueError):
                continue  # a rank died mid-write: its batches are redone
            if info.get("key") == self.key:
                done.update(int(b) for b in info.get("done", []))
        return done


    def _open_existing(self) -> None:
        assert self.path is not None
        mf = self.path / MANIFEST
        if not mf.exists():
            return
        try:
            info = json.loads(mf.read_text())
        except (OSError, ValueError) as exc:
            warnings.warn(f"{mf}: unreadable manifest ({exc}); the store will be rebuilt", stacklevel=2)
            return
        if info.get("format") != FORMAT_VERSION or info.get("key") != self.key:
            return  # a different computation: start over in this folder
        if self.n is not None and info.get("n") not in (None, self.n):
            return
        self.n = info.get("n")
        self.dims = {k: int(v) for k, v in info.get("arrays", {}).items()}
        self.dtype = {v: k for k, v in _NP_DTYPES.items()}.get(info.get("dtype"), torch.float32)
        self.done = set(info.get("done", [])) | self._rank_done()
        try:
            mode = "c" if info.get("complete") else "r+"
            for name in self.dims:
                self._maps[name] = np.load(self.path / _fname(name), mmap_mode=mode)
        except (OSError, ValueError) as exc:
            warnings.warn(f"{self.path}: store files unreadable ({exc}); the store will be rebuilt", stacklevel=2)
            self._maps, self.dims, self.done = {}, {}, set()
            return
        self.complete = bool(info.get("complete"))
        if self.complete:
            self._arrays = {k: torch.from_numpy(v) for k, v in self._maps.items()}

    def _allocate(self, arrays: dict[str, Tensor]) -> None:
        first = next(iter(arrays.values()))
        self.dtype = first.dtype
        self.dims = {k: int(v.shape[1]) for k, v in arrays.items()}
        if self.path is not None and self.n is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            np_dtype = _NP_DTYPES.get(self.dtype, "float32")
            for name, dim in self.dims.items():
                self._maps[name] = np.lib.format.open_memmap(
                    self.path / _fname(name), mode="w+", dtype=np_dtype, shape=(self.n, dim)
                )
            self._write_manifest()
        elif self.path is None and self.n is not None:
            # in memory with a known size: write in place (no concatenation copy at the end)
            joined = self.joined if self.joined and set(self.joined) <= set(self.dims) else []
            if joined:
                buf = torch.empty(self.n, sum(self.dims[k] for k in joined), dtype=self.dtype)
                off = 0
                for name in joined:
                    self._pre[name] = buf[:, off : off + self.dims[name]]
                    off += self.dims[name]
                self._joined_buf = buf
            for name, dim in self.dims.items():
                if name not in self._pre:
                    self._pre[name] = torch.empty(self.n, dim, dtype=self.dtype)

    # ---------------------------------------------------------------- writing
    def is_done(self, batch_index: int) -> bool:
        return batch_index in self.done

    def write(self, batch_index: int, start: int, arrays: dict[str, Tensor]) -> None:
        if self.keep is not None:
            arrays = {k: v for k, v in arrays.items() if k in self.keep}
        arrays = {k: v.detach() for k, v in arrays.items()}
        if not self.dims:
            self._allocate(arrays)
        if self._maps:
            for name, t in arrays.items():
                self._maps[name][start : start + t.shape[0]] = t.cpu().numpy()
            self.done.add(batch_index)
            now = time.monotonic()
            if now - self._last_flush > 2.0:
                self._flush()
                self._last_flush = now
        elif self._pre:
            for name, t in arrays.items():
                self._pre[name][start : start + t.shape[0]].copy_(t)
            self.done.add(batch_index)
        else:
            for name, t in arrays.items():
                self._mem.setdefault(name, []).append((start, t.cpu().clone()))
            self.done.add(batch_index)

    def _flush(self) -> None:
        for m in self._maps.values():
            m.flush()
            if not self.complete:
                _release_pages(m)
        self._write_manifest()

    def save_progress(self) -> None:
        """Persist the rows written so far (called when a pass stops early)."""
        if self._maps and not self.complete:
            self._flush()

    def finish(self, n: int, batches: Optional[int] = None) -> None:
        """Mark the pass complete (``n`` rows in all; every one of ``batches`` done, when given).

        On disk, the manifest's owner first folds in the batches other ranks recorded.
        """
        folded = bool(self._maps) and not self.rank
        if folded:
            self.done |= self._rank_done()
        if batches is not None and self._maps:
            missing = sorted(set(range(batches)) - self.done)
            if missing:
                raise StoreMismatchError(
                    f"{self.path}: {len(missing)} of {batches} batches were not computed (first: {missing[:5]}); "
                    "run the pass again to fill them in"
                )
        if self._maps:
            if self.n is not None and n != self.n:
                raise StoreMismatchError(
                    f"{self.path}: the data yielded {n} examples but {self.n} were expected"
                )
            self.complete = True
            self._flush()
            if folded:
                for f in self._rank_files():  # now in the manifest
                    f.unlink(missing_ok=True)
            self._arrays = {k: torch.from_numpy(np.asarray(v)) for k, v in self._maps.items()}
            return
        if self._pre:
            if n != self.n:
                raise StoreMismatchError(f"the data yielded {n} examples but {self.n} were expected")
            self._arrays, self._pre = self._pre, {}
            self.complete = True
            return
        self.n = n
        for name, parts in self._mem.items():
            parts.sort(key=lambda p: p[0])
            self._arrays[name] = torch.cat([t for _, t in parts], dim=0) if parts else torch.empty(0, self.dims.get(name, 0))
        self._mem = {}
        self.complete = True
        if self.path is not None and self._arrays:  # unknown n up front: save now
            self.path.mkdir(parents=True, exist_ok=True)
            for name, t in self._arrays.items():
                np.save(self.path / _fname(name), t.numpy())
            self.done = set(range(len(self.done)))
            self._write_manifest()

    # ---------------------------------------------------------------- reading
    def has(self, name: str) -> bool:
        return name in self._arrays

    def array(self, name: str) -> Tensor:
        if not self.complete:
            raise RuntimeError("the feature store is not complete yet")
        return self._arrays[name]

    def joined_array(self, names: Sequence[str]) -> Tensor:
        """``names``' arrays side by side, ``(n, Σ dims)``: without a copy when the store
        was opened with ``joined=names`` and holds its rows in memory."""
        if not self.complete:
            raise RuntimeError("the feature store is not complete yet")
        if self._joined_buf is not None and list(names) == self.joined:
            return self._joined_buf
        return torch.cat([self._arrays[k] for k in names], dim=1)

    def rows(self, name: str, start: int, stop: int, device: Optional[torch.device] = None) -> Tensor:
        t = self._arrays[name][start:stop]
        return t.to(device) if device is not None and t.device != device else t

    def names(self) -> list[str]:
        """The names of the arrays this store holds."""
        return list(self._arrays)

    def checkpoint_array(self, checkpoint: int, part: str) -> Tensor:
        """The whole array ``part`` of checkpoint ``checkpoint`` (see :func:`array_name`);
        ``KeyError`` naming the array when this store does not hold it."""
        name = array_name(checkpoint, part)
        if self.complete and name not in self._arrays:
            raise KeyError(f"the feature store has no array {name!r} (it holds "
                           f"{', '.join(sorted(self._arrays)) or 'none'})")
        return self.array(name)

    def outputs(self, checkpoint: int) -> Tensor:
        """Model outputs (logits) at ``checkpoint``, ``(N, K)`` (TracInCPFast stores them)."""
        return self.checkpoint_array(checkpoint, OUTPUTS)

    def self_terms(self, checkpoint: int) -> Tensor:
        """Unweighted ``⟨∇ℓ_i, ∇ℓ_i⟩`` at ``checkpoint``, ``(N,)`` (≥ 0; multiply by the
        learning rate and sum over checkpoints for TracIn self-influence)."""
        return self.checkpoint_array(checkpoint, SELF)[:, 0]

    def layer_inputs(self, checkpoint: int) -> Tensor:
        """final_fc_layer's input at ``checkpoint``, ``(N, A)`` (TracInCPFast)."""
        return self.checkpoint_array(checkpoint, LAYER_INPUT)

    def output_grads(self, checkpoint: int) -> Tensor:
        """∂loss/∂output at ``checkpoint``, ``(N, K)`` (TracInCPFast)."""
        return self.checkpoint_array(checkpoint, OUTPUT_GRAD)

    def embeddings(self, checkpoint: int) -> Tensor:
        """The projected gradient at ``checkpoint``, ``(N, P)`` (TracInCPFastRandProj)."""
        return self.checkpoint_array(checkpoint, EMBEDDING)

    def input_sketch(self) -> Optional[Tensor]:
        """The sketch of every example's inputs, ``(N, D)`` (TracInCPFast with
        ``store_input_sketch``), or None when this store holds none."""
        name = array_name(0, INPUT_SKETCH)
        return self.array(name) if self.has(name) else None


def _release_pages(m: np.memmap) -> None:
    """Unmap the written (and just flushed) pages of a shared file mapping from this
    process: the data stay in the file and the page cache, and the pass's resident memory
    stays flat in N instead of growing by every row written (1.8 GB at a million rows).
    Private (copy-on-write) maps are never passed here; without madvise, nothing happens."""
    mm = getattr(m, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
