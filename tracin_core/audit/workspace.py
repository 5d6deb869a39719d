"""A Workspace is one audit: model factory, checkpoints, train/test data, loss, store.

It is what the app and the command line work on: it loads every checkpoint once
(safely), builds the TracIn engines over the training data with a feature store
under a cache folder keyed by content hashes, and answers the app's questions
(predictions, proponents/opponents, mislabel rankings) from that store.
All public methods are thread-safe (one lock per workspace): the app shares one
instance between sessions.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..engine.checkpoints import fit_state_dict, read_checkpoint, resolve_checkpoints
from .datasets import LabeledDataset, load_dataset
from . import rankers as rk
from . import settings
from .workspace_config import DatasetConfig, WorkspaceConfig, WorkspaceError

PathLike = Union[str, os.PathLike]

LOSSES: dict[str, Callable[..., nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "nll": nn.NLLLoss,
}

#: where feature stores live by default: ``$TRACIN_CACHE/stores`` (else
#: ``~/.cache/tracin_audit/stores``), the folder the app uses too, so a store built ahead
#: of time by ``python -m tracin_core precompute`` is the one the app opens
DEMO_TOML = Path(__file__).resolve().parents[2] / "assets" / "demo" / "workspace.toml"
FASHION_TOML = Path(__file__).resolve().parents[2] / "assets" / "fashion" / "workspace.toml"


@dataclass
class CheckpointEntry:
    """One checkpoint: where it came from, its learning rate and content hash."""

    name: str
    learning_rate: float
    sha256: str
    epoch: Optional[int] = None
    lr_source: str = "default"  # 'workspace' | 'checkpoint' | 'default'


@dataclass
class InfluenceResult:
    """Proponents and opponents of one test example (tables sorted by rank)."""

    proponents: pd.DataFrame
    opponents: pd.DataFrame
    predicted: int
    probability: float
    label: Optional[int]
    method: str


#: Rows above which a missing ranking is not computed on a page visit without asking
#: (:attr:`RankingStatus.expensive`): the neighbour searches switch to an HNSW graph there and the
#: default ranking takes seconds to minutes. Read at call time (tests lower it).
RANKING_ASK_ROWS = rk.EXACT_SEARCH_MAX

#: Rough seconds per training row of the default ranking on two cores, for
#: :attr:`RankingStatus.estimated_seconds` (benchmarks/results/app_scale.md: 60,000 Fashion-MNIST
#: rows in 7-11 s, 1,000,000 in 131-193 s across runs; the slower end, so the page does not promise too little).
RANKING_SECONDS_PER_ROW = 1.9e-4


@dataclasses.dataclass(frozen=True)
class RankingStatus:
    """Whether ranking ``name`` is kept beside the store for the current rankers' code.

    ``stored``: read back, not computed, by :meth:`Workspace.mislabel_scores`;
    ``rows``: training examples; ``estimated_seconds``: rough time to compute it;
    ``expensive``: not stored and ``rows`` above :data:`RANKING_ASK_ROWS` (a page should
    ask before computing); ``command``: the CLI line that computes it ahead of time.
    """

    name: str
    stored: bool
    rows: int
    estimated_seconds: float
    expensive: bool
    command: str


@functools.lru_cache(maxsize=1)
def _rankers_code() -> str:
    """Short hash of the code that computes stored rankings: the rankers' and the live
    re-ranking's modules and :meth:`Workspace.ranker_inputs` (which feeds them), so stored
    rankings are recomputed when any of them changes, and only then (an edit elsewhere in
    this module, e.g. to a page helper, keeps them)."""
    import inspect

    from . import active_review

    h = hashlib.sha256(Path(rk.__file__).read_bytes())
    h.update(Path(active_review.__file__).read_bytes())
    h.update(inspect.getsource(Workspace.ranker_inputs).encode())
    return h.hexdigest()[:12]


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """``write(binary file)`` through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`_write_atomic`."""
    _write_atomic(path, lambda fh: np.save(fh, array, allow_pickle=False))


def _load_model(factory: Union[str, Callable[..., nn.Module]], kwargs: dict[str, Any]) -> nn.Module:
    if callable(factory):
        model = factory(**kwargs)
    else:
        from .models import build_model

        model = build_model(str(factory), **kwargs)
    if not isinstance(model, nn.Module):
        raise WorkspaceError(f"model factory {factory!r} did not return a torch.nn.Module")
    return model


class Workspace:
    """One audit. Build with :meth:`from_toml`, :meth:`demo` or the constructor.

    ``checkpoints``: paths (a folder, a glob, one file or a list) or uploaded
    ``(name, bytes)`` pairs. ``learning_rates``: one per checkpoint, a single float
    for all, or None (read from each checkpoint, else 1.0).
    """

    def __init__(
        self,
        *,
        name: str,
        model_factory: Union[str, Callable[..., nn.Module]],
        final_fc_layer: str,
        checkpoints: Union[PathLike, Sequence[Any]],
        train: LabeledDataset,
        test: Optional[LabeledDataset] = None,
        learning_rates: Union[None, float, Sequence[Optional[float]]] = None,
        loss: str = "cross_entropy",
        reduction: str = "sum",
        model_kwargs: Optional[dict[str, Any]] = None,
        cache_dir: Optional[PathLike] = None,
        device: Optional[str] = None,
        batch_size: int = 256,
        ground_truth: Optional[Sequence[int]] = None,
        source: Optional[str] = None,
    ) -> None:
        self.name = name
        self.source = source
        self.model_factory = model_factory
        self.model_kwargs = dict(model_kwargs or {})
        self.final_fc_layer = final_fc_layer
        self.train = train
        self.test = test
        self.batch_size = int(batch_size)
        self.device = torch.device(device) if device else torch.device("cpu")
        if loss not in LOSSES:
            raise WorkspaceError(f"[loss] name: unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if reduction not in ("sum", "mean"):
            raise WorkspaceError(f"[loss] reduction must be 'sum' or 'mean', got {reduction!r}")
        self.loss_name, self.reduction = loss, reduction
        self.loss_fn = LOSSES[loss](reduction=reduction)
        self._lock = threading.RLock()
        self.model = _load_model(model_factory, self.model_kwargs).to(self.device).eval()
        try:
            self.model.get_submodule(final_fc_layer)
        except AttributeError:
            raise WorkspaceError(
                f"[model] final_fc_layer: the model has no layer {final_fc_layer!r}"
            ) from None
        self._states: list[dict[str, Tensor]] = []
        self.checkpoints: list[CheckpointEntry] = []
        self._load_checkpoints(checkpoints, learning_rates)
        self.model.load_state_dict(self._states[-1])  # predictions use the final checkpoint
        if ground_truth is not None and len(ground_truth) != len(train):
            raise WorkspaceError(f"ground truth has {len(ground_truth)} labels for {len(train)} training examples")
        self.ground_truth = None if ground_truth is None else np.asarray(ground_truth, dtype=np.int64)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else settings.store_cache_dir()
        self._engines: dict[Any, Any] = {}
        #: the typed config this workspace was opened from (from_toml / from_config), else None
        self.config: Optional[WorkspaceConfig] = None
        self._pred_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ loading
    def _load_checkpoints(self, checkpoints, learning_rates) -> None:
        if isinstance(checkpoints, (list, tuple)) and checkpoints and all(
            isinstance(c, tuple) and len(c) == 2 and isinstance(c[1], (bytes, bytearray)) for c in checkpoints
        ):
            items = list(checkpoints)  # uploads: (name, bytes)
        elif isinstance(checkpoints, (list, tuple)):
            # an explicit list keeps its order (learning rates pair with it; the last is final)
            missing = [str(p) for p in checkpoints if not os.path.isfile(p)]
            if missing or not checkpoints:
                raise WorkspaceError(f"checkpoints: no such file {missing[0]!r}" if missing else "checkpoints: empty list")
            items = [(str(p), str(p)) for p in checkpoints]
        else:
            try:  # a folder or a glob: natural order (checkpoint-5 before checkpoint-10)
                items = [(p, p) for p in resolve_checkpoints(checkpoints)]
            except ValueError as exc:
                raise WorkspaceError(str(exc)) from None
        if isinstance(learning_rates, (int, float)):
            lrs: list[Optional[float]] = [float(learning_rates)] * len(items)
        elif learning_rates is None:
            lrs = [None] * len(items)
        else:
            lrs = list(learning_rates)
            if len(lrs) != len(items):
                raise WorkspaceError(f"{len(lrs)} learning rates for {len(items)} checkpoints")
        for (name, data), lr in zip(items, lrs):
            state, info = read_checkpoint(data, name=os.path.basename(str(name)) if isinstance(data, bytes) else None)
            state = fit_state_dict(self.model, state, info.source)
            if lr is not None:
                rate, src = float(lr), "workspace"
            elif info.learning_rate is not None:
                rate, src = info.learning_rate, "checkpoint"
            else:
                rate, src = 1.0, "default"
            if not np.isfinite(rate) or rate <= 0:
                raise WorkspaceError(f"{info.source}: learning rate must be a positive number, got {rate}")
            self._states.append({k: v.to(self.device) for k, v in state.items()})
            self.checkpoints.append(CheckpointEntry(str(name), rate, info.sha256, info.epoch, src))

    @classmethod
    def from_toml(cls, path: PathLike, *, cache_dir: Optional[PathLike] = None, device: Optional[str] = None,
                  check_factory: Optional[Callable[[str], None]] = None,
                  flagged: Optional[str | list[str]] = None) -> "Workspace":
        """Read a workspace file (:meth:`WorkspaceConfig.from_toml`, README "Workspace
        files"); relative paths are relative to its folder. Then :meth:`from_config`.

        ``flagged`` (``"exclude"``, ``"keep"`` or a list of flags), when given, replaces
        ``[train] flagged``: what to do with the items the training set's
        ``labels_override`` flags (excluded, ambiguous, outlier, duplicate; default
        ``"exclude"``, see :func:`tracin_core.audit.labels_csv.read_labels_csv`).

        ``check_factory(factory_string)`` runs right after the file is parsed, before any
        module is imported or any data read; it raises to refuse the factory (the app
        passes :meth:`tracin_core.audit.server_config.ServerConfig.check_factory`).
        """
        config = WorkspaceConfig.from_toml(path)
        if flagged is not None:
            train = DatasetConfig.from_dict({**config.train.load_arguments(),
                                             "kind": config.train.kind, "flagged": flagged},
                                            "train", where=str(path))
            config = dataclasses.replace(config, train=train)
        return cls.from_config(config, cache_dir=cache_dir, device=device, check_factory=check_factory,
                               source=str(path))

    @classmethod
    def from_config(cls, config: WorkspaceConfig, *, cache_dir: Optional[PathLike] = None,
                    device: Optional[str] = None, check_factory: Optional[Callable[[str], None]] = None,
                    dataset_options: Optional[dict[str, Any]] = None,
                    source: Optional[str] = None) -> "Workspace":
        """Open a :class:`WorkspaceConfig` (read from TOML, built by the app, or read back
        from beside a store). Relative paths resolve against ``config.base_dir``.

        ``check_factory``: as for :meth:`from_toml`; ``dataset_options``: extra
        ``load_dataset`` arguments for image-folder data (the server's zip caps
        ``max_zip_bytes`` / ``max_zip_files``). Errors name the table and the field.
        """
        where = source or config.name
        if check_factory is not None:
            try:
                check_factory(config.model.factory)
            except (PermissionError, ValueError) as exc:
                raise WorkspaceError(f"{where}: {exc}") from None
        base = config.base_dir

        def dataset(spec: Optional[DatasetConfig]) -> Optional[LabeledDataset]:
            if spec is None:
                return None
            extra = dict(dataset_options or {}) if spec.kind == "image_folder" else {}
            return load_dataset(spec.kind, base_dir=base, **spec.load_arguments(), **extra)

        try:
            train = dataset(config.train)
            test = dataset(config.test)
        except (ValueError, FileNotFoundError) as exc:
            raise WorkspaceError(f"{where}: {exc}") from None
        assert train is not None
        truth = None
        if config.evaluation.ground_truth is not None:
            gt = pd.read_csv(config.resolve(config.evaluation.ground_truth))
            col = config.evaluation.column
            if col not in gt.columns or "index" not in gt.columns:
                raise WorkspaceError(f"{where}: [evaluation] ground_truth needs columns 'index' and {col!r}")
            truth = gt.sort_values("index")[col].to_numpy()
        lrs = config.checkpoints.learning_rates
        ws = cls(
            name=config.name,
            model_factory=config.model.factory,
            final_fc_layer=config.model.final_fc_layer,
            model_kwargs=dict(config.model.kwargs),
            checkpoints=config.checkpoint_paths(),
            learning_rates=list(lrs) if isinstance(lrs, tuple) else lrs,
            train=train,
            test=test,
            loss=config.loss.name,
            reduction=config.loss.reduction,
            cache_dir=cache_dir,
            device=device,
            batch_size=config.batch_size,
            ground_truth=truth,
            source=source,
        )
        ws.config = config
        return ws

    @classmethod
    def demo(cls, *, cache_dir: Optional[PathLike] = None, device: Optional[str] = None) -> "Workspace":
        """The built-in digits demo (checkpoints and noisy labels ship in assets/demo)."""
        return cls.from_toml(DEMO_TOML, cache_dir=cache_dir, device=device)

    @classmethod
    def fashion(cls, *, cache_dir: Optional[PathLike] = None, device: Optional[str] = None) -> "Workspace":
        """The built-in Fashion-MNIST workspace: 60,000 / 10,000 images from Debian's
        ``dataset-fashion-mnist`` package, 10% tutorial-noise labels, a small CNN with six
        checkpoints (shipped in assets/fashion). WorkspaceError with the ``apt-get`` command
        when the package is missing."""
        from .datasets import FASHION_MNIST_ROOT

        if not FASHION_MNIST_ROOT.is_dir():
            raise WorkspaceError(f"the Fashion-MNIST images are not installed ({FASHION_MNIST_ROOT}): "
                                 "apt-get install dataset-fashion-mnist")
        return cls.from_toml(FASHION_TOML, cache_dir=cache_dir, device=device)

    # ------------------------------------------------------------------ identity
    @property
    def learning_rates(self) -> list[float]:
        return [c.learning_rate for c in self.checkpoints]

    @property
    def classes(self) -> list[str]:
        return list(self.train.classes)

    @property
    def data_hash(self) -> str:
        """Content hash of the training data and its labels in effect."""
        return self.train.fingerprint()

    @property
    def fingerprint(self) -> str:
        """Hash of everything the scores depend on (config, checkpoints, data)."""
        h = hashlib.sha256()
        factory = self.model_factory if isinstance(self.model_factory, str) else getattr(
            self.model_factory, "__qualname__", repr(self.model_factory))
        h.update(json.dumps([factory, self.model_kwargs, self.final_fc_layer, self.loss_name,
                             self.reduction], sort_keys=True, default=str).encode())
        for c in self.checkpoints:
            h.update(f"{c.sha256}:{c.learning_rate}".encode())
        h.update(self.train.fingerprint().encode())
        if self.test is not None:
            h.update(self.test.fingerprint().encode())
        return h.hexdigest()

    @property
    def store_dir(self) -> Path:
        return self.cache_dir / f"{self.name}-{self.fingerprint[:16]}"

    # ------------------------------------------------------------------ engines
    def _load_func(self, model: nn.Module, index: int) -> float:
        model.load_state_dict(self._states[index])
        return self.checkpoints[index].learning_rate

    def _engine(self, kind: str, **opts: Any):
        key = (kind, tuple(sorted((k, str(v)) for k, v in opts.items())))
        with self._lock:
            if key in self._engines:
                return self._engines[key]
            from ..engine.tracin import TracInCP, TracInCPFast, TracInCPFastRandProj

            model = copy.deepcopy(self.model)  # engines never touch the shared model
            common = dict(checkpoints=list(range(len(self._states))), checkpoints_load_func=self._load_func,
                          loss_fn=self.loss_fn, batch_size=self.batch_size)
            cache = self.store_dir
            if kind == "fast":
                eng = TracInCPFast(model, self.final_fc_layer, self.train, cache_dir=cache, store_outputs=True,
                                  store_input_sketch=True, **common)
            elif kind == "cp":
                eng = TracInCP(model, self.train, layers=opts.get("layers"), cache_dir=cache, **common)
            elif kind == "randproj":
                eng = TracInCPFastRandProj(model, self.final_fc_layer, self.train,
                                           projection_dim=opts.get("projection_dim"), cache_dir=cache, **common)
            elif kind == "index":
                from ..engine.influence_index import IndexSettings, InfluenceIndex

                eng = InfluenceIndex(self._engine("fast"), IndexSettings(**opts))  # the lock is re-entrant
            else:
                raise ValueError(f"unknown method {kind!r}; use 'fast', 'cp', 'randproj' or 'index'")
            self._engines[key] = eng
            self.save_config()
            return eng

    def save_config(self) -> Optional[Path]:
        """Write :attr:`config` beside the feature stores (``<store_dir>/workspace.json``,
        :meth:`WorkspaceConfig.to_json`; done when the first engine is made), so a store
        folder says what it was computed from. Returns the path; None without a config."""
        if self.config is None:
            return None
        from .workspace_config import JSON_NAME

        path = self.store_dir / JSON_NAME
        if not path.is_file():
            self.config.to_json(path)
        return path

    def store_ready(self, method: str = "fast", **opts: Any) -> bool:
        """Whether engine ``method`` (``"fast"``, ``"cp"``, ``"randproj"``, ``"index"``;
        ``opts`` as for :meth:`influence`) has its feature store open and complete in this
        instance (the index: built or read back). A complete store on disk is opened, not
        recomputed, by :meth:`ensure_store`."""
        eng = self._engine(method, **opts)
        if method == "index":
            return bool(eng.loaded or eng.build_seconds)
        store = eng._store
        return bool(store is not None and store.complete)

    def ensure_store(self, method: str = "fast",
                     progress: Optional[Callable[[int, Optional[int]], None]] = None,
                     **opts: Any) -> None:
        """Run engine ``method``'s training pass now unless :meth:`store_ready`
        (``progress(done, total)`` per batch; ``opts`` as for :meth:`influence`, e.g.
        ``layers=[...]`` or ``projection_dim=``). Reuses a complete store on disk."""
        if self.store_ready(method, **opts):
            return
        if not opts:
            self.precompute([method], progress=progress)
            return
        eng = self._engine(method, **opts)
        with self._lock:
            eng.train_store(progress=progress)

    @staticmethod
    def ranking_needs_cp(method: Optional[str]) -> bool:
        """Whether ranking ``method`` (None = the default) reads the all-layer (TracInCP)
        store, so that ``ensure_store("cp")`` must run before :meth:`mislabel_scores`."""
        return (method or rk.DEFAULT_RANKER) in rk.NEEDS_CP

    def precompute(self, methods: Sequence[str] = ("fast",),
                   progress: Optional[Callable[[int, Optional[int]], None]] = None) -> None:
        """Run the training pass for ``methods`` now (progress(done, total) per batch)."""
        for m in methods:
            eng = self._engine(m)
            with self._lock:
                if m == "index":  # the Fast store, then the index built from it
                    self._engine("fast").train_store(progress=progress)
                    eng.build()
                else:
                    eng.train_store(progress=progress)

    # ------------------------------------------------------------------ predictions
    def predict(self, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(predicted labels (n,), class probabilities (n, K))`` at the final checkpoint."""
        with self._lock, torch.no_grad():
            out = self.model(x.to(self.device))
            prob = torch.softmax(out.float(), dim=1).cpu().numpy()
        return prob.argmax(1), prob

    def predictions(self, split: str = "test") -> pd.DataFrame:
        """Table of ``index, label, predicted, probability, correct`` for a split."""
        ds = self.test if split == "test" else self.train
        if ds is None:
            raise WorkspaceError("this workspace has no test data")
        with self._lock:
            if split == "train" and split not in self._pred_cache:
                # the training pass already stored every checkpoint's outputs: reuse the
                # final checkpoint's instead of another pass over the training data
                store = self._engine("fast").train_store()
                logits = store.outputs(len(self.checkpoints) - 1).float()
                prob = torch.softmax(logits, dim=1).numpy()
                self._pred_cache[split] = (prob.argmax(1), prob)
            if split not in self._pred_cache:
                preds, probs = [], []
                for start in range(0, len(ds), 512):
                    xb = torch.stack([ds[i][0] for i in range(start, min(len(ds), start + 512))])
                    p, pr = self.predict(xb)
                    preds.append(p)
                    probs.append(pr)
                self._pred_cache[split] = (np.concatenate(preds), np.concatenate(probs))
            pred, prob = self._pred_cache[split]
        labels = ds.labels.numpy()
        return pd.DataFrame({
            "index": np.arange(len(ds)), "label": labels, "predicted": pred,
            "probability": prob[np.arange(len(ds)), pred], "correct": pred == labels,
        })

    def train_predictions(self) -> pd.DataFrame:
        """The model's view of every training example at the final checkpoint: the
        columns of ``predictions("train")`` (index, label, predicted, probability,
        correct) plus ``suggested`` (:func:`tracin_core.audit.review_queue.suggested_labels`:
        the prediction, or the second most probable class when the prediction equals the
        given label), ``suggested_probability`` and ``given_probability``; indexed by
        ``index`` (which stays a column)."""
        from .review_queue import suggested_labels

        pred = self.predictions("train").set_index("index", drop=False)
        probs = np.asarray(self.class_probabilities("train"))
        suggested, suggested_p, given_p = suggested_labels(pred["label"].to_numpy(), probs)
        pred["suggested"] = suggested
        pred["suggested_probability"] = suggested_p
        pred["given_probability"] = given_p
        return pred

    def class_probabilities(self, split: str = "test") -> np.ndarray:
        self.predictions(split)
        return self._pred_cache[split][1]

    # ------------------------------------------------------------------ influence
    def _train_table(self, idx: Tensor, scores: Tensor) -> pd.DataFrame:
        preds = self.predictions("train")
        idx_np = idx.numpy()
        return pd.DataFrame({
            "rank": np.arange(1, len(idx_np) + 1),
            "index": idx_np,
            "score": scores.double().numpy(),
            "label": self.train.labels.numpy()[idx_np],
            "predicted": preds["predicted"].to_numpy()[idx_np],
        })

    def influence(self, test: Union[int, Tensor], k: int = 10, method: str = "fast",
                  label: Optional[int] = None, **opts: Any) -> InfluenceResult:
        """Proponents and opponents of one test example.

        ``test``: an index into the test set, or an input tensor (one example, no
        batch dimension) — then ``label`` defaults to the model's prediction, so the
        result explains the prediction.
        """
        if isinstance(test, (int, np.integer)):
            if self.test is None:
                raise WorkspaceError("this workspace has no test data; pass an input tensor")
            x, y = self.test[int(test)]
            label = int(y) if label is None else label
        else:
            x = test
        x = x.unsqueeze(0)
        pred, prob = self.predict(x)
        given = int(pred[0]) if label is None else int(label)
        eng = self._engine(method, **opts)
        batch = (x, torch.tensor([given]))
        with self._lock:
            if method == "index":
                pro, opp = (eng.top_k(batch, k, side) for side in (True, False))
            elif method == "randproj":
                pro, opp = (self._index_top_k(eng, batch, k, side) for side in (True, False))
            else:
                pro = eng.influence(batch, k=k, proponents=True)
                opp = eng.influence(batch, k=k, proponents=False)
        return InfluenceResult(
            proponents=self._train_table(pro.indices[0], pro.influence_scores[0]),
            opponents=self._train_table(opp.indices[0], opp.influence_scores[0]),
            predicted=int(pred[0]), probability=float(prob[0, pred[0]]),
            label=None if isinstance(test, Tensor) and label is None else given, method=method,
        )

    #: candidates asked of the RandProj index per result, re-scored exactly
    INDEX_CANDIDATES = 4

    def _index_top_k(self, eng, batch, k: int, proponents: bool):
        """Top-``k`` through RandProj's annoy index, scored exactly: the index (projected
        embeddings) proposes ``INDEX_CANDIDATES · k`` candidates, TracInCPFast's store gives
        their exact scores, the best ``k`` are kept. The scores shown are therefore exact
        TracInCPFast scores, not projected estimates whose scale changes with the dimension."""
        from ..engine.scoring import KMostInfluentialResults

        n = len(self.train)
        wide = eng.influence(batch, k=min(n, self.INDEX_CANDIDATES * k), proponents=proponents)
        exact = self._engine("fast").influence_of(batch, wide.indices)
        order = torch.argsort(exact if not proponents else -exact, dim=1, stable=True)[:, :k]
        return KMostInfluentialResults(torch.gather(wide.indices, 1, order), torch.gather(exact, 1, order))

    def self_influence(self, method: str = "fast") -> np.ndarray:
        eng = self._engine(method)
        with self._lock:
            return eng.self_influence().double().numpy()

    # ------------------------------------------------------------------ mislabels
    def ranker_inputs(self, with_cp: bool = False) -> rk.RankerInputs:
        eng = self._engine("fast")
        with self._lock:
            store = eng.train_store()
            C = len(self.checkpoints)
            logits = np.stack([store.outputs(c).double().numpy() for c in range(C)])
            si_fast = np.stack([store.self_terms(c).double().numpy() for c in range(C)])
            si_cp = None
            if with_cp:
                cp = self._engine("cp")
                cstore = cp.train_store()
                si_cp = np.stack([cstore.self_terms(c).double().numpy() for c in range(C)])
            # per-checkpoint views of the (memory-mapped) store, not one stacked copy: the
            # neighbourhood rankers read the early checkpoints only (1.5 GB saved at 1M rows)
            features = [store.layer_inputs(c).float().numpy() for c in range(C)]
            sketch = store.input_sketch()  # None in a store made before the sketch was kept
        return rk.RankerInputs(logits, self.train.labels.numpy(), np.asarray(self.learning_rates), si_fast, si_cp,
                               features=features, inputs=None if sketch is None else sketch.float().numpy())

    def mislabel_methods(self) -> dict[str, str]:
        """Ranking names and descriptions (``None`` in :meth:`mislabel_scores` = the default)."""
        return {name: desc for name, (_, desc) in rk.RANKERS.items()}

    def mislabel_scores(self, method: Optional[str] = None) -> pd.DataFrame:
        """``index``, ``score`` (higher = more likely mislabelled), ``rank``; sorted by rank.

        The scores are kept beside the feature store (``<store>/rankings/<name>-<code>.npy``,
        ``<code>`` a hash of the rankers' source) and read back by later calls and later
        processes: a ranking is computed once per workspace content, not once per visit
        (the default ranking takes about 9 s at 60,000 examples on two cores, `benchmarks/results/app_scale.md`).
        """
        name = method or rk.DEFAULT_RANKER
        return rk.score_table(self.mislabel_score_arrays([name])[name])

    def mislabel_score_arrays(self, names: Optional[Sequence[str]] = None,
                              with_cp: bool = False) -> dict[str, np.ndarray]:
        """Scores (N,) of several rankings (default: every one computable, the all-layer
        one with ``with_cp``), read from beside the store where they were kept, the rest
        computed from one set of ranker inputs and kept. Arrays are read-only."""
        names = list(names) if names is not None else rk.available(with_cp)
        unknown = [n for n in names if n not in rk.RANKERS]
        if unknown:
            raise ValueError(f"unknown ranking {unknown[0]!r}; choose one of {', '.join(rk.RANKERS)}")
        out = {n: self._stored_ranking(n) for n in names}
        missing = [n for n, v in out.items() if v is None]
        if missing:
            inp = self.ranker_inputs(with_cp=with_cp or any(n in rk.NEEDS_CP for n in missing))
            for n in missing:
                with rk.recording_searches() as searches:
                    scores = np.asarray(rk.compute(n, inp), dtype=np.float64)
                path = self._ranking_path(n)
                meta = {"ranking": n, "n": len(scores),
                        "neighbour_searches": [dataclasses.asdict(x) for x in searches]}
                _write_atomic(path.with_suffix(".json"),
                              lambda fh, meta=meta: fh.write(json.dumps(meta, indent=1).encode()))
                _save_npy_atomic(path, scores)
                out[n] = scores
        for v in out.values():
            v.setflags(write=False)
        return out

    def review_signals(self, method: Optional[str] = None):
        """The signals the live re-ranking of ranking ``method`` (None = the default) reads
        (:class:`tracin_core.audit.active_review.ReviewSignals`): kept beside the store
        (``<store>/rankings/<name>-<code>-signals.npz``) like the ranking itself, so a
        Review page's first visit reads them instead of searching neighbours again."""
        from . import active_review as ar

        name = method or rk.DEFAULT_RANKER
        path = self._ranking_path(name).with_name(f"{name}-{_rankers_code()}-signals.npz")
        fields = ("static", "static_logit", "features", "neighbours", "same_label", "pairs")
        try:
            with np.load(path, allow_pickle=False) as saved:
                sig = ar.ReviewSignals(**{f: saved[f] for f in fields},
                                       names=tuple(str(x) for x in saved["names"]))
            if sig.n == len(self.train):
                return sig
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or damaged: computed below
        static = self.mislabel_score_arrays([name])[name]
        sig = ar.build_signals(static, self.ranker_inputs())
        _write_atomic(path, lambda fh: np.savez(fh, **{f: getattr(sig, f) for f in fields},
                                                names=np.asarray(sig.names)))
        return sig

    def ranking_searches(self, method: Optional[str] = None) -> list[rk.NeighbourSearch]:
        """How the neighbour searches behind the kept ranking ``method`` (None = the
        default) were done (exact, or HNSW with its sampled recall); empty when the
        ranking looks at no neighbourhoods or has not been computed."""
        path = self._ranking_path(method or rk.DEFAULT_RANKER).with_suffix(".json")
        try:
            meta = json.loads(path.read_text())
            return [rk.NeighbourSearch(**x) for x in meta.get("neighbour_searches", [])]
        except (OSError, ValueError, TypeError):
            return []

    def ranking_status(self, method: Optional[str] = None) -> RankingStatus:
        """Whether ranking ``method`` (None = the default) is kept for this workspace
        content and rankers' code, and, if not, whether computing it is expensive
        (:class:`RankingStatus`). Reads only the kept file's header, computes nothing."""
        name = method or rk.DEFAULT_RANKER
        if name not in rk.RANKERS:
            raise ValueError(f"unknown ranking method {name!r}; choose one of {', '.join(rk.RANKERS)}")
        n = len(self.train)
        path = self._ranking_path(name)
        try:
            stored = np.load(path, mmap_mode="r", allow_pickle=False).shape == (n,)
        except (OSError, ValueError):
            stored = False  # absent, damaged, or made by other rankers' code (another name)
        builtin = {str(DEMO_TOML): "demo", str(FASHION_TOML): "fashion"}
        where = builtin.get(str(self.source), self.source) or "WORKSPACE.toml"
        cmd = f"python -m tracin_core mislabels {where}"
        if method is not None:
            cmd += f" --method {name}"
        return RankingStatus(name=name, stored=stored, rows=n, estimated_seconds=n * RANKING_SECONDS_PER_ROW,
                             expensive=not stored and n > RANKING_ASK_ROWS, command=cmd)

    def _ranking_path(self, name: str) -> Path:
        return self.store_dir / "rankings" / f"{name}-{_rankers_code()}.npy"

    def _stored_ranking(self, name: str) -> Optional[np.ndarray]:
        """The kept scores of ranking ``name``, or None (absent, damaged or the wrong size)."""
        path = self._ranking_path(name)
        if not path.is_file():
            return None
        try:
            scores = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged file is recomputed
        return scores if scores.shape == (len(self.train),) else None

    @property
    def is_mislabelled(self) -> Optional[np.ndarray]:
        """Ground truth (when known): given label differs from the true label."""
        if self.ground_truth is None:
            return None
        return self.train.labels.numpy() != self.ground_truth
