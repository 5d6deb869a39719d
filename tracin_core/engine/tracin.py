"""Captum-compatible TracIn classes: ``TracInCP``, ``TracInCPFast``, ``TracInCPFastRandProj``.

Constructor arguments follow Captum's order and defaults; keyword-only extras are
``device``, ``cache_dir``, ``show_progress`` and ``captum_batching`` (read a Dataset in
batches of ``batch_size``, as Captum, instead of the faster pass batch). The difference
is structure: the first call walks the training data once, computing for all checkpoints
at once the per-example quantities every score is made of (see
:mod:`tracin_core.engine.featurize`), and keeps them in a :class:`~tracin_core.engine.store.FeatureStore`. Every later
``influence()`` / ``self_influence()`` on the same instance reads the store.

Scores: ``TI(j, i) = Σ_c η_c ⟨∇ℓ'_j(θ_c), ∇ℓ_i(θ_c)⟩`` (test ``j``, training ``i``).
Influence matrices have shape ``(n_test, n_train)``; self-influence ``(n,)``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from .batching import batch_decode_enabled, batch_decoder, collated
from .checkpoints import load_into_model, resolve_checkpoints
from .distributed import barrier, rank_world
from .errors import TracInArgumentError
from .featurize import (
    Featurizer,
    SKETCH_DIM,
    FinalLayerFeaturizer,
    GradientFeaturizer,
    ProjectedFeaturizer,
    Skipped,
    Snapshot,
    as_loader,
    model_device,
    resolve_module,
    run_pass,
    take_snapshots,
)
from .nearest_neighbors import AnnoyNearestNeighbors, NearestNeighbors
from .scoring import KMostInfluentialResults, TopK, influence_matrix, score_block, top_k, weighted_self
from .store import EMBEDDING, LAYER_INPUT, MANIFEST, OUTPUT_GRAD, SELF, FeatureStore, array_name

__all__ = ["TracInCP", "TracInCPFast", "TracInCPFastRandProj", "KMostInfluentialResults", "TracInArgumentError"]

Batch = Union[tuple, list]

#: TracInCP keeps per-example gradient features in memory up to this size (bytes);
#: above it (and with no ``cache_dir``) influence queries stream over the data.
DEFAULT_FEATURE_MEMORY = 256 * 1024**2

#: batch size of the training pass when given a Dataset (results do not depend on it)
PASS_BATCH = 512

#: score matrices up to this many elements are cached for the latest test batch
SCORE_CACHE_ELEMENTS = 1 << 24


def _progress_bar(enabled: bool, total: Optional[int], desc: str, callback=None, unit: str = "ex"):
    """A callable advancing a tqdm bar (when enabled) and/or a ``callback(done, total)``.

    Bars count examples (``unit="ex"``), whatever the batching; Captum's count batches."""
    bar = None
    if enabled:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit)
    state = {"done": 0}

    def advance(n: int) -> None:
        state["done"] += n
        if bar is not None:
            bar.update(n)
        if callback is not None:
            callback(state["done"], total)

    def close() -> None:
        if bar is not None:
            bar.close()

    advance.close = close  # type: ignore[attr-defined]
    return advance


def _dataset_len(loader: DataLoader) -> Optional[int]:
    """Number of examples a sequential, non-dropping loader yields; None if unknown."""
    try:
        bs = loader.batch_sampler
        if isinstance(bs, BatchSampler) and isinstance(bs.sampler, SequentialSampler) and not bs.drop_last:
            return len(loader.dataset)  # type: ignore[arg-type]
        if loader.batch_size is None and isinstance(loader.sampler, SequentialSampler):
            return None
    except TypeError:
        return None
    return None


def _example_total(data: Any) -> Optional[int]:
    """Examples a batch tuple or DataLoader yields (a progress bar's total); None if unknown."""
    if isinstance(data, (tuple, list)):
        try:
            return len(data[-1])
        except TypeError:
            return None
    try:
        bs = data.batch_sampler
        if isinstance(bs, BatchSampler):
            n = len(bs.sampler)
            return n // bs.batch_size * bs.batch_size if bs.drop_last else n
    except (AttributeError, TypeError):
        return None
    return None


def _tensor_digest(h: "hashlib._Hash", x: Any) -> None:
    if isinstance(x, Tensor):
        t = x.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    elif isinstance(x, (list, tuple)):
        for v in x:
            _tensor_digest(h, v)
    else:
        h.update(repr(x).encode())


_INPUTS_REQUIRED = (
    "`inputs` argument is required. If you wish to calculate self influence scores, "
    "please use the `self_influence` method instead."
)


def _check_k(k: Any) -> None:
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise TracInArgumentError(f"k must be a positive int or None, got {k!r}")


def _resolve_checkpoints(checkpoints: Any) -> list:
    """:func:`resolve_checkpoints`, its errors starting with Captum's wording."""
    try:
        return resolve_checkpoints(checkpoints)
    except ValueError as e:
        msg = str(e)
        msg = msg[len("checkpoints: "):] if msg.startswith("checkpoints: ") else msg
        raise ValueError(f"Invalid checkpoints provided for TracIn class: {msg} (argument `checkpoints`)") from None


class _TracInBase:
    """Shared machinery: checkpoints, the training pass, the store, test features."""

    _method = "base"

    @property
    def _pass_batch(self) -> int:
        return PASS_BATCH

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Union[Dataset, DataLoader],
        checkpoints: Union[str, os.PathLike, Sequence[Any], Iterable[Any]],
        checkpoints_load_func: Optional[Callable[[nn.Module, Any], Optional[float]]] = None,
        loss_fn: Optional[Callable] = None,
        batch_size: Optional[int] = 1,
        test_loss_fn: Optional[Callable] = None,
        *,
        device: Optional[Union[str, torch.device]] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        show_progress: bool = False,
        captum_batching: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        if device is not None:
            self.device = torch.device(device)
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError("device='cuda' was asked for but CUDA is not available on this machine")
            model.to(self.device)
        else:
            self.device = model_device(model)
        self.checkpoints = _resolve_checkpoints(checkpoints)
        self.checkpoints_load_func = checkpoints_load_func or load_into_model
        if not callable(self.checkpoints_load_func):
            raise TypeError("checkpoints_load_func must be callable as f(model, checkpoint) -> learning rate")
        for name, fn in (("loss_fn", loss_fn), ("test_loss_fn", test_loss_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable as {name}(outputs, labels)")
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
        self.batch_size = batch_size
        if isinstance(train_dataset, DataLoader):
            self.train_dataloader = train_dataset
        elif isinstance(train_dataset, Dataset) or hasattr(train_dataset, "__getitem__"):
            if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
                raise TracInArgumentError(
                    "since the `train_dataset` argument was a `Dataset`, `batch_size` must be an int: "
                    f"batch_size must be a positive int when train_dataset is a Dataset, got {batch_size!r}"
                )
            self.train_dataloader = DataLoader(train_dataset, batch_size, shuffle=False)
        else:
            raise TypeError(
                f"train_dataset must be a torch Dataset or DataLoader, got {type(train_dataset).__name__}"
            )
        # The pass decodes in batches of PASS_BATCH examples whatever batch_size says:
        # per-example quantities do not depend on the batching (up to the last bits: BLAS
        # and conv kernels sum in an order that depends on the batch's size); small batches
        # keep peak memory low and large ones keep per-batch overhead low.
        # captum_batching=True batches a Dataset by batch_size, as Captum does: scores are
        # then bitwise those of a DataLoader(train_dataset, batch_size).
        # Datasets whose batches can provably be decoded in one go (torchvision's image
        # datasets with ToTensor/Normalize, TensorDataset) are: same tensors, bitwise.
        self.captum_batching = bool(captum_batching)
        self._pass_loader = self.train_dataloader
        if not isinstance(train_dataset, DataLoader):
            pass_batch = batch_size if self.captum_batching else self._pass_batch
            fast = batch_decoder(train_dataset) if batch_decode_enabled() else None
            if fast is not None:
                self._pass_loader = DataLoader(fast, pass_batch, shuffle=False, collate_fn=collated)
            elif batch_size != pass_batch:
                self._pass_loader = DataLoader(train_dataset, pass_batch, shuffle=False)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.show_progress = show_progress
        self._snapshots: Optional[list[Snapshot]] = None
        self._store: Optional[FeatureStore] = None
        self._test_cache: dict[str, dict[str, Tensor]] = {}
        self._score_cache: Optional[tuple[dict[str, Tensor], bool, Tensor]] = None

    # ------------------------------------------------------------ helpers
    @classmethod
    def get_name(cls) -> str:
        return cls.__name__

    @property
    def snapshots(self) -> list[Snapshot]:
        """Every checkpoint loaded once (state and learning rate), in order."""
        if self._snapshots is None:
            self._snapshots = take_snapshots(
                self.model, self.checkpoints, self.checkpoints_load_func, self.device
            )
        return self._snapshots

    @property
    def learning_rates(self) -> list[float]:
        return [s.learning_rate for s in self.snapshots]

    def _weights(self) -> list[float]:
        return self.learning_rates

    def _featurizer(self) -> Featurizer:
        raise NotImplementedError

    def _terms(self):
        return self._featurizer().terms

    def _store_key(self, config: Optional[dict[str, Any]] = None) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self._config() if config is None else config, sort_keys=True, default=str).encode())
        for snap in self.snapshots:
            h.update(str(snap.learning_rate).encode())
            for k in sorted(snap.state):
                h.update(k.encode())
                _tensor_digest(h, snap.state[k])
        ds = getattr(self.train_dataloader, "dataset", None)
        h.update(type(ds).__name__.encode())
        n = _dataset_len(self.train_dataloader)
        h.update(str(n).encode())
        if n:
            for i in sorted({0, n // 2, n - 1}):  # a cheap content check of the data
                try:
                    _tensor_digest(h, ds[i])  # type: ignore[index]
                except Exception:  # noqa: BLE001 - a best-effort content check: the length still counts
                    pass
        return h.hexdigest()

    def _config(self) -> dict[str, Any]:
        return {
            "method": self._method,
            "loss": repr(self.loss_fn),
            "reduction": getattr(self.loss_fn, "reduction", None),
            "batch_size": getattr(self._pass_loader, "batch_size", None),
        }

    def _keep_names(self) -> Optional[set[str]]:
        return None

    def _joined_names(self) -> Optional[list[str]]:
        """Store arrays read back side by side (kept in one buffer when in memory)."""
        return None

    # ------------------------------------------------------------ the pass
    def train_store(self, show_progress: bool = False,
                    progress: Optional[Callable[[int, Optional[int]], None]] = None) -> FeatureStore:
        """The training set's feature store: computed by one pass over the training data on
        first use (``progress(done, total)`` called as examples are done; ``total`` None for a
        loader without length), then read. Its arrays, one checkpoint at a time:
        :meth:`FeatureStore.outputs`, ``self_terms``, ``layer_inputs``, ``output_grads``,
        ``embeddings`` (which ones a store holds depends on the class)."""
        return self._train_store(show_progress=show_progress, progress=progress)

    def _train_store(self, show_progress: bool = False, progress: Optional[Callable] = None,
                     desc: Optional[str] = None) -> FeatureStore:
        """The training set's feature store, computing it (one pass) on first use.

        ``desc``: the progress bar's text for the pass (the calling method's, in
        Captum's wording), shown when ``show_progress`` or the instance's flag is set.

        Inside :func:`tracin_core.engine.distributed.sharded` with an initialised process group
        (``torchrun``), every rank computes its share of the batches into the same on-disk store.
        """
        if self._store is not None and self._store.complete:
            return self._store
        _ = self.snapshots  # load every checkpoint before the pass
        n = _dataset_len(self.train_dataloader)
        rank, world = rank_world()
        path = None
        key = ""
        if self.cache_dir is not None:
            key = self._store_key()
            path = self.cache_dir / f"{self._method}-{key[:16]}"
        if world > 1 and (path is None or n is None):
            raise ValueError(
                f"{self.get_name()}: a sharded pass (torchrun, {world} processes) needs cache_dir and a "
                "training set with a length: every process writes its rows into the same store on disk"
            )

        def open_store() -> FeatureStore:
            return FeatureStore(path, key=key, n=n, meta=self._config(), keep=self._keep_names(),
                                rank=rank if world > 1 else None, joined=self._joined_names())

        store = open_store()
        if world == 1:
            if not store.complete and not self._derive_store(store, n, show_progress, progress, desc):
                result = self._run_pass(store, store.is_done, show_progress, progress, desc)
                store.finish(result.n)
        else:
            if rank == 0 and not store.complete and not store.dims:
                # batch 0 fixes the arrays' shapes: rank 0 allocates the files first
                self._run_pass(store, lambda b: b != 0, False, None, desc)
                store.save_progress()
            barrier()
            store = open_store()
            if not store.complete:
                done = set(store.done)
                result = self._run_pass(store, lambda b: b in done or b % world != rank, show_progress, progress,
                                        desc)
                store.save_progress()
            barrier()  # every rank's rows are written
            if rank == 0 and not store.complete:
                store.finish(result.n, batches=result.batches)
            barrier()
            store = open_store()
            if not store.complete:
                raise RuntimeError(f"{path}: the sharded pass did not complete the store")
        self._store = store
        if rank == 0:
            self._after_store(store)
        barrier()  # rank 0 builds (and saves) derived indexes first; the others load them
        if rank != 0:
            self._after_store(store)
        return store

    def _derive_store(self, store: FeatureStore, n: Optional[int], show_progress: bool = False,
                      progress: Optional[Callable] = None, desc: Optional[str] = None) -> bool:
        """Fill ``store`` from another store instead of a pass over the data; False when
        there is none to derive from (the base classes never derive)."""
        return False

    def _pass_desc(self) -> str:
        """Progress text of a training pass no public method asked for (precompute)."""
        return f"Using {self.get_name()} to compute features for training batches"

    def _run_pass(self, store: FeatureStore, skip: Callable[[int], bool], show_progress: bool,
                  progress: Optional[Callable], desc: Optional[str] = None):
        """One pass over the batches not ``skip``-ped, written into ``store``."""
        n = _dataset_len(self.train_dataloader)
        bar = _progress_bar(show_progress or self.show_progress, n if n is not None else
                            _example_total(self.train_dataloader), desc or self._pass_desc(), progress)
        try:
            return run_pass(
                self.model,
                self._batches(skip),
                self.snapshots,
                self._featurizer(),
                self.loss_fn,
                store.write,
                self.device,
                skip=skip,
                progress=bar,
            )
        except BaseException:
            store.save_progress()  # an interrupted pass resumes from here
            raise
        finally:
            bar.close()  # type: ignore[attr-defined]

    def _batches(self, skip: Callable[[int], bool]):
        """The pass's batches; with a sequential loader, batches that ``skip`` are not even
        decoded (they come as :class:`Skipped`, only their size counts)."""
        dl = self._pass_loader
        bs = getattr(dl, "batch_sampler", None)
        if not isinstance(bs, BatchSampler) or not isinstance(bs.sampler, SequentialSampler):
            return dl  # run_pass decodes and then skips
        batches = list(bs)
        todo = [b for i, b in enumerate(batches) if not skip(i)]
        if len(todo) == len(batches):
            return dl
        rest = iter(DataLoader(dl.dataset, batch_sampler=todo, collate_fn=dl.collate_fn, num_workers=dl.num_workers))

        def gen():
            for i, b in enumerate(batches):
                yield Skipped(len(b)) if skip(i) else next(rest)

        return gen()

    def _after_store(self, store: FeatureStore) -> None:
        """Hook for subclasses (RandProj builds its index here)."""

    def _features(self, inputs: Union[Batch, DataLoader], loss_fn, cache: bool = True,
                  progress: Optional[Callable[[int], None]] = None,
                  snapshots: Optional[list[Snapshot]] = None) -> dict[str, Tensor]:
        """Per-example arrays of ``inputs`` (a batch or a DataLoader), in memory, on device.

        ``snapshots``: the checkpoints to featurize at (default: all; arrays are named
        ``c0/…`` in the given list's order). ``progress(n)``: called per batch of n.
        """
        key = None
        if cache and snapshots is None and isinstance(inputs, (tuple, list)):
            h = hashlib.sha1()
            _tensor_digest(h, inputs)
            h.update(str(id(loss_fn)).encode())
            key = h.hexdigest()
            if key in self._test_cache:
                return self._test_cache[key]
        parts: dict[str, list[Tensor]] = {}

        def consume(_bi: int, _start: int, arrays: dict[str, Tensor]) -> None:
            for k, v in arrays.items():
                parts.setdefault(k, []).append(v)

        run_pass(self.model, as_loader(inputs), self.snapshots if snapshots is None else snapshots,
                 self._featurizer(), loss_fn, consume, self.device, progress=progress)
        if not parts:
            raise ValueError("inputs: no examples were given")
        feats = {k: torch.cat(v, 0) for k, v in parts.items()}
        if key is not None:
            self._test_cache.clear()  # keep only the latest query
            self._test_cache[key] = feats
        return feats

    def _rows_getter(self, store: FeatureStore, dtype: torch.dtype):
        dev = self.device

        def get(name: str, start: int, stop: int) -> Tensor:
            t = store.rows(name, start, stop)
            return t.to(device=dev, dtype=dtype)

        return get

    # ------------------------------------------------------------ public API
    def influence(
        self,
        inputs: Union[Batch, DataLoader],
        k: Optional[int] = None,
        proponents: bool = True,
        show_progress: bool = False,
        aggregate: bool = False,
    ) -> Union[Tensor, KMostInfluentialResults]:
        """Influence of every training example on each test example in ``inputs``.

        ``k=None``: scores, shape ``(n_test, n_train)`` (``(1, n_train)`` when
        ``aggregate``, summed over test examples). ``k`` an int:
        :class:`KMostInfluentialResults` of shape ``(n_test, min(k, n_train))`` —
        proponents highest first, opponents (``proponents=False``) most negative first.
        """
        if inputs is None:
            raise TracInArgumentError(_INPUTS_REQUIRED)
        _check_k(k)
        if k is None:
            desc = f"Using {self.get_name()} to compute influence for training batches"
        else:
            desc = (f"Using {self.get_name()} to perform computation for getting "
                    f"{'proponents' if proponents else 'opponents'}. Processing training batches")
        store = self._train_store(show_progress, desc=desc)
        test = self._features(inputs, self.test_loss_fn)
        return self._score(store, test, k, proponents, aggregate, show_progress, desc)

    def influence_of(self, inputs: Batch, train_indices: Tensor) -> Tensor:
        """Exact scores of chosen training examples: ``train_indices`` (n_test, m) ->
        scores (n_test, m), entry ``[i, j]`` the influence of training example
        ``train_indices[i, j]`` on test example ``i`` (what ``influence(k=None)`` has
        there; the rows are read from the store, nothing else)."""
        store = self._train_store()
        test = self._features(inputs, self.test_loss_fn)
        idx = torch.as_tensor(train_indices, dtype=torch.long)
        n_test = next(iter(test.values())).shape[0]
        if idx.dim() != 2 or idx.shape[0] != n_test:
            raise ValueError(f"train_indices must have shape ({n_test}, m); got {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= store.n):
            raise ValueError(f"train_indices must lie in 0..{store.n - 1}")
        dtype = next(iter(test.values())).dtype
        rows = []
        for i in range(n_test):
            def train_rows(name: str, sel: Tensor = idx[i]) -> Tensor:
                return store.array(name)[sel].to(device=self.device, dtype=dtype)

            one = {name: t[i:i + 1] for name, t in test.items()}
            rows.append(score_block(one, train_rows, self._terms(), self._weights())[0])
        return torch.stack(rows).cpu() if rows else torch.empty(0, idx.shape[1])

    def _score(self, store, test, k, proponents, aggregate, show_progress, desc):
        """Scores or top-k of ``test`` against the store, a progress bar (``desc``) over its rows."""
        bar = _progress_bar(show_progress or self.show_progress, store.n, desc)
        try:
            return self._score_rows(store, test, k, proponents, aggregate, bar)
        finally:
            bar.close()  # type: ignore[attr-defined]

    def _score_rows(self, store, test, k, proponents, aggregate, bar):
        terms = self._terms()
        dtype = next(iter(test.values())).dtype
        getter = self._rows_getter(store, dtype)
        weights = self._weights()
        n_test = next(iter(test.values())).shape[0]
        if n_test * store.n <= SCORE_CACHE_ELEMENTS:
            # interactive queries: keep the latest test batch's score matrix, so the
            # opponents call after the proponents call (or k=None) costs no products
            cached = self._score_cache
            if cached is None or cached[0] is not test or cached[1] != aggregate:
                scores = influence_matrix(test, getter, store.n, terms, weights, aggregate, progress=bar)
                self._score_cache = cached = (test, aggregate, scores)
            else:
                bar(store.n)  # served from the latest query's score matrix
            scores = cached[2]
            if k is None:
                return scores.cpu().clone()
            acc = TopK(k, proponents)
            acc.add(0, scores)
            return acc.result(scores.shape[0], scores.dtype)
        if k is None:
            return influence_matrix(test, getter, store.n, terms, weights, aggregate, progress=bar).cpu()
        return top_k(test, getter, store.n, terms, weights, k, proponents, aggregate, progress=bar)

    def self_influence(
        self,
        inputs: Optional[Union[Batch, DataLoader]] = None,
        show_progress: bool = False,
        outer_loop_by_checkpoints: bool = False,
    ) -> Tensor:
        """Self-influence ``SI_i = Σ_c η_c ‖∇ℓ_i(θ_c)‖²``, shape ``(n,)``.

        ``inputs=None`` scores the training set (read from the store); otherwise the
        given batch or DataLoader (with ``loss_fn``). ``outer_loop_by_checkpoints``: with
        ``inputs`` given, one pass over them per checkpoint (Captum's loop order, one
        checkpoint's features in memory at a time; the same sums, bitwise); without, no
        effect (the training set's store holds every checkpoint's terms, from one pass).
        ``show_progress``: bars with Captum's texts (``… Processing batch``, and with
        the checkpoint loop ``… Processing checkpoint``).
        """
        weights = self._weights()
        show = show_progress or self.show_progress
        desc = f"Using {self.get_name()} to compute self influence. Processing batch"
        if inputs is None:
            store = self._train_store(show_progress, desc=desc)
            bar = _progress_bar(show, store.n, desc)  # reading the store's self-terms
            cols = [store.checkpoint_array(c, SELF) for c in range(len(weights))]
            bar(store.n)
            bar.close()  # type: ignore[attr-defined]
        elif outer_loop_by_checkpoints:
            # Captum's loop order, on request: one pass over ``inputs`` per checkpoint
            # (peak memory of one checkpoint's features; C passes instead of one)
            total = _example_total(inputs)
            outer = _progress_bar(show, len(self.snapshots),
                                  f"Using {self.get_name()} to compute self influence. Processing checkpoint",
                                  unit="checkpoint")
            cols = []
            try:
                for snap in self.snapshots:
                    bar = _progress_bar(show, total, desc)
                    try:
                        feats = self._features(inputs, self.loss_fn, cache=False, progress=bar, snapshots=[snap])
                    finally:
                        bar.close()  # type: ignore[attr-defined]
                    cols.append(feats[array_name(0, SELF)])
                    outer(1)
            finally:
                outer.close()  # type: ignore[attr-defined]
        else:
            bar = _progress_bar(show, _example_total(inputs), desc)
            try:
                feats = self._features(inputs, self.loss_fn, cache=False, progress=bar)
            finally:
                bar.close()  # type: ignore[attr-defined]
            cols = [feats[array_name(c, SELF)] for c in range(len(weights))]
        return weighted_self(cols, weights).cpu()


class TracInCPFast(_TracInBase):
    """TracIn on the last fully connected layer: ``Σ_c η_c (a'_j·a_i)(δ'_j·δ_i)``.

    ``a``: the input of ``final_fc_layer``; ``δ``: the gradient of the loss w.r.t.
    the model output (times the batch size for 'mean' losses). Exact, as Captum.
    """

    _method = "fast"

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: Union[nn.Module, str],
        train_dataset: Union[Dataset, DataLoader],
        checkpoints: Union[str, os.PathLike, Sequence[Any], Iterable[Any]],
        checkpoints_load_func: Optional[Callable[[nn.Module, Any], Optional[float]]] = None,
        loss_fn: Optional[Callable] = None,
        batch_size: Optional[int] = 1,
        test_loss_fn: Optional[Callable] = None,
        vectorize: bool = False,
        *,
        device: Optional[Union[str, torch.device]] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        show_progress: bool = False,
        captum_batching: bool = False,
        store_outputs: bool = False,
        store_input_sketch: bool = False,
    ) -> None:
        if loss_fn is None:
            raise TracInArgumentError(
                "loss function must not be none: loss_fn is required for TracInCPFast "
                "(e.g. nn.CrossEntropyLoss(reduction='sum'))"
            )
        super().__init__(
            model, train_dataset, checkpoints, checkpoints_load_func, loss_fn, batch_size, test_loss_fn,
            device=device, cache_dir=cache_dir, show_progress=show_progress, captum_batching=captum_batching,
        )
        try:
            self.final_fc_layer_name, self.final_fc_layer = resolve_module(model, final_fc_layer, "final_fc_layer")
        except ValueError as e:
            if isinstance(final_fc_layer, str):  # Captum's wording first, for code matching on it
                raise ValueError(f'Invalid final_fc_layer str: "{final_fc_layer}" provided! {e}') from None
            raise
        self.vectorize = vectorize
        # store_outputs: also keep each checkpoint's model outputs (for loss/margin rankers);
        # store_input_sketch: a sketch of every example's inputs (for neighbourhoods in input space)
        self._fz = FinalLayerFeaturizer(self.final_fc_layer, keep_outputs=store_outputs,
                                        keep_input_sketch=store_input_sketch)

    def _featurizer(self) -> Featurizer:
        return self._fz

    def _config(self):
        config = {**super()._config(), "final_fc_layer": self.final_fc_layer_name, "outputs": self._fz.keep_outputs}
        if self._fz.keep_input_sketch:  # (absent when off: the stores made before it keep their keys)
            config["input_sketch"] = SKETCH_DIM
        return config


class TracInCP(_TracInBase):
    """TracIn on every parameter of ``layers`` (all parameters when ``None``).

    Per-example gradients come from ``torch.func``; Linear layers are kept as exact
    factors (input × output-gradient), everything else as full gradients.
    ``sample_wise_grads_per_batch`` is accepted for Captum compatibility: gradients
    are always per example, for every selected parameter (Captum's fast path only
    covers Linear and Conv2d).
    """

    _method = "cp"

    @property
    def _pass_batch(self) -> int:
        # per-example gradients (conv patches) are large: smaller batches bound memory
        return max(1, PASS_BATCH // 4)

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Union[Dataset, DataLoader],
        checkpoints: Union[str, os.PathLike, Sequence[Any], Iterable[Any]],
        checkpoints_load_func: Optional[Callable[[nn.Module, Any], Optional[float]]] = None,
        layers: Optional[list[str]] = None,
        loss_fn: Optional[Callable] = None,
        batch_size: Optional[int] = 1,
        test_loss_fn: Optional[Callable] = None,
        sample_wise_grads_per_batch: bool = False,
        *,
        device: Optional[Union[str, torch.device]] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        show_progress: bool = False,
        captum_batching: bool = False,
        feature_memory: int = DEFAULT_FEATURE_MEMORY,
    ) -> None:
        super().__init__(
            model, train_dataset, checkpoints, checkpoints_load_func, loss_fn, batch_size, test_loss_fn,
            device=device, cache_dir=cache_dir, show_progress=show_progress, captum_batching=captum_batching,
        )
        self.sample_wise_grads_per_batch = sample_wise_grads_per_batch
        self.layers = layers
        self.param_names = self._select_params(model, layers)
        self.feature_memory = feature_memory
        self._fz = GradientFeaturizer(model, self.param_names)
        self._keep_all: Optional[bool] = None

    @staticmethod
    def _select_params(model: nn.Module, layers: Optional[list[str]]) -> list[str]:
        if layers is None:
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            if not names:
                raise ValueError("model has no parameters that require grad; pass layers=[...]")
            return names
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
        names: list[str] = []
        for layer in layers:
            lname, mod = resolve_module(model, layer, "layers")
            for pname, _ in mod.named_parameters():
                full = f"{lname}.{pname}" if lname else pname
                if full not in names:
                    names.append(full)
        if not names:
            raise ValueError(f"layers: {layers} have no parameters")
        return names

    def _featurizer(self) -> Featurizer:
        return self._fz

    def _config(self):
        return {**super()._config(), "params": self.param_names}

    def _keep_names(self) -> Optional[set[str]]:
        """All arrays if they fit ``feature_memory`` (or go to ``cache_dir``), else only self-terms."""
        return None if self._keep_features() else {array_name(c, SELF) for c in range(len(self.checkpoints))}

    def _keep_features(self) -> bool:
        if self._keep_all is None:
            if self.cache_dir is not None:
                self._keep_all = True
            else:
                n = _dataset_len(self.train_dataloader)
                per_example = self._estimate_dims()
                itemsize = next(iter(self.snapshots[0].state.values())).element_size()
                self._keep_all = n is not None and n * per_example * itemsize * len(self.checkpoints) <= self.feature_memory
        return self._keep_all

    def _estimate_dims(self) -> int:
        """Per-example floats per checkpoint, upper bound before the plan is known."""
        if self._fz.planned:
            return sum(self._fz.dims.values())
        total = 0
        selected = set(self.param_names)
        for mname, mod in self.model.named_modules():
            if type(mod) is nn.Linear and f"{mname}.weight" in selected:
                total += mod.in_features + 1 + mod.out_features
                selected.discard(f"{mname}.weight")
                selected.discard(f"{mname}.bias")
        params = dict(self.model.named_parameters())
        total += sum(params[n].numel() for n in selected if n in params)
        return total

    def compute_intermediate_quantities(self, inputs: Union[Batch, DataLoader], aggregate: bool = False) -> Tensor:
        """Per-example gradients of every selected parameter, times each checkpoint's
        learning rate, concatenated over checkpoints: shape ``(n, C·D)`` (``(1, C·D)``
        summed over the examples when ``aggregate``), D = the selected parameters' size,
        in Captum's order (parameters in model/``layers`` order, checkpoints in order).

        As in Captum, the gradients of ``loss_fn`` are scaled by ``η_c`` (not ``√η_c``):
        dot products of these rows are influence scores when every ``η_c = 1``.
        """
        feats = self._features(inputs, self.loss_fn, cache=False)
        parts = []
        for c, snap in enumerate(self.snapshots):
            mine = {k.split("/", 1)[1]: v for k, v in feats.items() if k.startswith(f"c{c}/")}
            grads = self._fz.param_gradients(mine)
            parts.append(torch.cat([grads[p] for p in self.param_names], dim=1) * snap.learning_rate)
        emb = torch.cat(parts, dim=1)
        return (emb.sum(0, keepdim=True) if aggregate else emb).cpu()

    def _score(self, store, test, k, proponents, aggregate, show_progress, desc):
        if all(store.has(array_name(c, name)) for c in range(len(self.checkpoints)) for name in self._fz.dims):
            return super()._score(store, test, k, proponents, aggregate, show_progress, desc)
        return self._streaming_score(test, k, proponents, aggregate, show_progress, desc)

    def _streaming_score(self, test, k, proponents, aggregate, show_progress, desc):
        """Features too large to keep: one more pass, scoring each batch as it comes."""
        from .scoring import TopK, score_block

        terms, weights = self._terms(), self._weights()
        n_test = 1 if aggregate else next(iter(test.values())).shape[0]
        acc = TopK(k, proponents) if k is not None else None
        blocks: list[Tensor] = []
        dtype = next(iter(test.values())).dtype

        def consume(_bi: int, start: int, arrays: dict[str, Tensor]) -> None:
            s = score_block(test, lambda name: arrays[name].to(dtype), terms, weights)
            if aggregate:
                s = s.sum(0, keepdim=True)
            if acc is not None:
                acc.add(start, s)
            else:
                blocks.append(s.cpu())

        bar = _progress_bar(show_progress or self.show_progress, _example_total(self.train_dataloader), desc, None)
        try:
            run_pass(self.model, self._pass_loader, self.snapshots, self._fz, self.loss_fn, consume,
                     self.device, progress=bar)
        finally:
            bar.close()  # type: ignore[attr-defined]
        if acc is not None:
            return acc.result(n_test, dtype)
        return torch.cat(blocks, dim=1)


class TracInCPFastRandProj(TracInCPFast):
    """TracInCPFast with embeddings in a nearest-neighbour index for fast top-k.

    Embedding per checkpoint: ``√η_c · vec((P_δᵀ δ)(P_aᵀ a)ᵀ)``, concatenated over
    checkpoints; ``P`` are Gaussian (N(0, 1/dim)) projections seeded by ``seed``,
    used only when ``projection_dim`` is smaller than the full size (as Captum).
    Without ``projection_dim`` the scores equal TracInCPFast's. Top-k candidates
    come from the index (opponents: query with the negated vector) and are
    re-ranked by their exact embedding dot products.
    """

    _method = "randproj"

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: Union[nn.Module, str],
        train_dataset: Union[Dataset, DataLoader],
        checkpoints: Union[str, os.PathLike, Sequence[Any], Iterable[Any]],
        checkpoints_load_func: Optional[Callable[[nn.Module, Any], Optional[float]]] = None,
        loss_fn: Optional[Callable] = None,
        batch_size: Optional[int] = 1,
        test_loss_fn: Optional[Callable] = None,
        vectorize: bool = False,
        nearest_neighbors: Optional[NearestNeighbors] = None,
        projection_dim: Optional[int] = None,
        seed: int = 0,
        *,
        device: Optional[Union[str, torch.device]] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        show_progress: bool = False,
        captum_batching: bool = False,
        candidates: int = 4,
    ) -> None:
        super().__init__(
            model, final_fc_layer, train_dataset, checkpoints, checkpoints_load_func, loss_fn,
            batch_size, test_loss_fn, vectorize, device=device, cache_dir=cache_dir,
            show_progress=show_progress, captum_batching=captum_batching,
        )
        if projection_dim is not None and (not isinstance(projection_dim, int) or projection_dim < 1):
            raise TracInArgumentError(f"projection_dim must be a positive int or None, got {projection_dim!r}")
        self.projection_dim = projection_dim
        self.seed = seed
        self.nearest_neighbors = nearest_neighbors if nearest_neighbors is not None else AnnoyNearestNeighbors()
        self.candidates = max(1, int(candidates))
        self._proj: Optional[tuple[Optional[Tensor], Optional[Tensor]]] = None
        self._pfz: Optional[ProjectedFeaturizer] = None
        self._fz = FinalLayerFeaturizer(self.final_fc_layer, keep_outputs=False)
        # Captum builds the index in __init__; so do we (one pass over the data)
        self._train_store()

    def _projections(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Captum's projections, from the first training batch's dimensions."""
        if self._proj is None:
            if self.projection_dim is None:
                self._proj = (None, None)
            else:
                first = next(iter(self.train_dataloader))
                from .featurize import split_batch

                inputs, labels = split_batch(first, self.device)
                f = self._fz(self.model, self.snapshots[0], inputs, labels, self.loss_fn)
                out_dim, in_dim = f["d"].shape[1], f["a"].shape[1]
                if out_dim * in_dim > self.projection_dim:
                    root = int(self.projection_dim**0.5)
                    pd, pa = min(root, out_dim), min(root, in_dim)
                    gen = torch.Generator().manual_seed(self.seed)
                    if getattr(self.train_dataloader, "generator", None) is None:
                        # Captum seeds the global RNG, then starts iterating the loader
                        # (which draws one int64 seed) before drawing the projections:
                        # mirror that on a private generator to get the same matrices.
                        torch.empty((), dtype=torch.int64).random_(generator=gen)
                    proj_d = torch.normal(torch.zeros(out_dim, pd), 1.0 / pd**0.5, generator=gen)
                    proj_a = torch.normal(torch.zeros(in_dim, pa), 1.0 / pa**0.5, generator=gen)
                    dtype = f["a"].dtype
                    self._proj = (proj_d.to(self.device, dtype), proj_a.to(self.device, dtype))
                else:
                    self._proj = (None, None)
        return self._proj

    def _featurizer(self) -> Featurizer:
        if self._pfz is None:
            self._pfz = ProjectedFeaturizer(self._fz, *self._projections())
        return self._pfz

    def _config(self):
        return {**super()._config(), "projection_dim": self.projection_dim, "seed": self.seed}

    def _weights(self) -> list[float]:
        return [1.0] * len(self.checkpoints)  # √η is inside the embeddings

    def _embedding(self, feats: dict[str, Tensor]) -> Tensor:
        return torch.cat([feats[name] for name in self._joined_names()], dim=1)

    def _joined_names(self) -> list[str]:
        return [array_name(c, EMBEDDING) for c in range(len(self.checkpoints))]

    def _keep_names(self) -> set[str]:
        return set(self._joined_names())  # no self-influence here: the embeddings only

    def _fast_store(self, n: Optional[int]) -> Optional[FeatureStore]:
        """A complete on-disk :class:`TracInCPFast` store of the same model, checkpoints,
        data, loss and batch size (with or without outputs and input sketch), or None."""
        if self.cache_dir is None or n is None:
            return None
        base = {**_TracInBase._config(self), "method": TracInCPFast._method,
                "final_fc_layer": self.final_fc_layer_name}
        configs = [{**base, "outputs": True, "input_sketch": SKETCH_DIM}, {**base, "outputs": True},
                   {**base, "outputs": False}]
        for config in configs:
            key = self._store_key(config)
            path = self.cache_dir / f"{TracInCPFast._method}-{key[:16]}"
            if not (path / MANIFEST).is_file():
                continue
            fast = FeatureStore(path, key=key, n=n)
            names = {array_name(c, x) for c in range(len(self.checkpoints)) for x in (LAYER_INPUT, OUTPUT_GRAD)}
            if fast.complete and names <= set(fast.names()):
                return fast
        return None

    def _derive_store(self, store: FeatureStore, n: Optional[int], show_progress: bool = False,
                      progress: Optional[Callable] = None, desc: Optional[str] = None) -> bool:
        """The embeddings from a TracInCPFast store of the same settings (its final-layer
        inputs ``a`` and output gradients ``δ`` are what the pass would compute), block by
        block in the pass's batches: no second pass over the data."""
        fast = self._fast_store(n)
        if fast is None or n is None:
            return False
        from .featurize import project_embedding

        proj_d, proj_a = self._projections()
        step = int(getattr(self._pass_loader, "batch_size", None) or 4096)
        bar = _progress_bar(show_progress or self.show_progress, n,
                            f"Using {self.get_name()} to compute embeddings from the TracInCPFast store", progress)
        try:
            for b, start in enumerate(range(0, n, step)):
                stop = min(n, start + step)
                if not store.is_done(b):
                    store.write(b, start, {
                        array_name(c, EMBEDDING): project_embedding(
                            fast.rows(array_name(c, LAYER_INPUT), start, stop),
                            fast.rows(array_name(c, OUTPUT_GRAD), start, stop),
                            None if proj_d is None else proj_d.cpu(),
                            None if proj_a is None else proj_a.cpu(), snap.learning_rate)
                        for c, snap in enumerate(self.snapshots)})
                bar(stop - start)
        except BaseException:
            store.save_progress()
            raise
        finally:
            bar.close()  # type: ignore[attr-defined]
        store.finish(n)
        return True

    def _pass_desc(self) -> str:
        return f"Using {self.get_name()} to compute embeddings for training batches"

    def _after_store(self, store: FeatureStore) -> None:
        # one (n, C·d) array: in memory, the store's own buffer (no second copy)
        emb = store.joined_array(self._joined_names())
        self._train_embedding = emb
        nn_index = self.nearest_neighbors
        if store.path is not None and isinstance(nn_index, AnnoyNearestNeighbors):
            # the index is persisted next to the store and reused when its settings match
            index_path = store.path / f"annoy-{nn_index.num_trees}-{nn_index.seed}.idx"
            if index_path.exists():
                try:
                    nn_index.load(index_path, emb.shape[1])
                    if nn_index.size == emb.shape[0]:
                        return
                except ValueError:
                    pass
            nn_index.setup(emb)
            tmp = index_path.with_suffix(f".tmp{os.getpid()}")
            nn_index.save(tmp)
            os.replace(tmp, index_path)
            return
        nn_index.setup(emb)

    def compute_intermediate_quantities(self, inputs: Union[Batch, DataLoader]) -> Tensor:
        """Embeddings ``(n, C·d)`` whose dot products are the influence scores."""
        return self._embedding(self._features(inputs, self.test_loss_fn, cache=False)).cpu()

    def influence(  # type: ignore[override]
        self,
        inputs: Optional[Union[Batch, DataLoader]] = None,
        k: Optional[int] = None,
        proponents: bool = True,
    ) -> Union[Tensor, KMostInfluentialResults]:
        """``k=None``: scores ``(n_test, n_train)`` (embedding dot products).

        ``k`` an int: top-k from the index, re-ranked exactly; shapes ``(n_test, k)``.
        (Captum's default is ``k=5``; here ``k=None`` means scores, as in the other classes.)
        """
        if inputs is None:
            raise TracInArgumentError(_INPUTS_REQUIRED + " (TracInCPFastRandProj has none: use TracInCPFast)")
        _check_k(k)
        test = self._embedding(self._features(inputs, self.test_loss_fn)).cpu()
        train = self._train_embedding
        if k is None:
            return test @ train.T
        n = train.shape[0]
        k = min(k, n)
        sign = 1.0 if proponents else -1.0
        want = min(n, max(k * self.candidates, k + 10))
        cand, _ = self.nearest_neighbors.get_nearest_neighbors(test * sign, want)
        if cand.shape[1] < k:
            raise RuntimeError(f"the nearest-neighbour index returned {cand.shape[1]} < k={k} candidates")
        idx_rows, score_rows = [], []
        for i in range(test.shape[0]):
            c = torch.unique(cand[i])
            s = (train[c] @ test[i]) * sign
            kk = min(k, len(c))
            v, order = torch.topk(s, kk)
            idx_rows.append(c[order])
            score_rows.append(v * sign)
        return KMostInfluentialResults(torch.stack(idx_rows).long(), torch.stack(score_rows))

    def self_influence(self, inputs=None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False):
        """Not provided (as in Captum): use :class:`TracInCPFast` for self-influence."""
        raise NotImplementedError(
            "TracInCPFastRandProj has no self_influence (random projections only approximate it); "
            "use TracInCPFast(...).self_influence(), which is exact and as fast"
        )
