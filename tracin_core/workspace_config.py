"""The workspace config: one typed schema for a workspace file, the app's "Build one here"
and the copy saved beside the feature store.

``WorkspaceConfig.from_toml(path)`` reads a workspace file (README, "Workspace files"),
:meth:`WorkspaceConfig.from_dict` checks a plain dict of the same shape (the TOML tables
as nested dicts), :meth:`WorkspaceConfig.to_dict` gives it back (JSON-able), and
``Workspace.from_config`` opens it. Errors are :class:`WorkspaceConfigError` (a
``ValueError``) naming the field at fault, e.g. ``[model] factory``.

Paths in a config (checkpoints, dataset roots, labels files, ground truth) are kept as
written; relative ones are resolved against ``base_dir`` (the TOML file's folder) when
the workspace is opened.
"""
from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from .errors import WorkspaceError

__all__ = ["CheckpointsConfig", "DatasetConfig", "EvaluationConfig", "LossConfig", "ModelConfig",
           "WorkspaceConfig", "WorkspaceConfigError"]

PathLike = Union[str, os.PathLike]
JSON_NAME = "workspace.json"  # the copy saved beside a store


class WorkspaceConfigError(WorkspaceError):
    """A workspace config that cannot be used; the message names the field at fault
    (a :class:`~tracin_core.errors.WorkspaceError`, so a ``ValueError``)."""


def _fail(where: str, message: str) -> WorkspaceConfigError:
    return WorkspaceConfigError(f"{where}: {message}")


def _table(data: Mapping[str, Any], name: str, cls: type, where: str) -> dict[str, Any]:
    """``data`` checked as the table ``[name]`` of ``cls``' fields (unknown keys refused)."""
    if not isinstance(data, Mapping):
        raise _fail(where, f"[{name}] must be a table, got {type(data).__name__}")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(where, f"[{name}] unknown key(s) {', '.join(unknown)}; allowed: "
                           f"{', '.join(sorted(allowed))}")
    return dict(data)


def _string(value: Any, field_name: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"{field_name} must be a non-empty string, got {value!r}")
    return value


def _optional_string(value: Any, field_name: str, where: str) -> Optional[str]:
    return None if value is None else _string(value, field_name, where)


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: ``factory`` ("package.module:callable" returning the nn.Module),
    ``final_fc_layer`` (the Linear layer the fast method reads), ``kwargs`` for the
    factory."""

    factory: str
    final_fc_layer: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "workspace") -> "ModelConfig":
        d = _table(data, "model", cls, where)
        for key in ("factory", "final_fc_layer"):
            if key not in d:
                raise _fail(where, f"[model] needs 'factory' and 'final_fc_layer' (missing {key!r})")
        factory = d["factory"]
        if not isinstance(factory, str) or ":" not in factory:
            raise _fail(where, f"[model] factory must be a string 'package.module:callable', "
                               f"got {factory!r}")
        kwargs = d.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise _fail(where, f"[model] kwargs must be a table, got {type(kwargs).__name__}")
        return cls(factory=factory,
                   final_fc_layer=_string(d["final_fc_layer"], "[model] final_fc_layer", where),
                   kwargs=dict(kwargs))


@dataclass(frozen=True)
class CheckpointsConfig:
    """``[checkpoints]``: ``paths`` (a folder, a glob, or a list of files in training
    order; the last gives predictions) and ``learning_rates`` (one number for all, one
    per checkpoint with ``None`` = the checkpoint's own, or ``None`` = each checkpoint's
    own, else 1.0). ``learning_rate`` in a TOML file is read as ``learning_rates``."""

    paths: Union[str, tuple[str, ...]]
    learning_rates: Union[None, float, tuple[Optional[float], ...]] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "workspace") -> "CheckpointsConfig":
        d = dict(data) if isinstance(data, Mapping) else data
        if isinstance(d, dict) and "learning_rate" in d and "learning_rates" not in d:
            d["learning_rates"] = d.pop("learning_rate")
        d = _table(d, "checkpoints", cls, where)
        if "paths" not in d:
            raise _fail(where, "[checkpoints] needs 'paths' (a folder, a glob or a list)")
        paths = d["paths"]
        if isinstance(paths, (list, tuple)):
            if not paths:
                raise _fail(where, "[checkpoints] paths is an empty list")
            paths = tuple(_string(p, f"[checkpoints] paths[{i}]", where) for i, p in enumerate(paths))
        else:
            paths = _string(paths, "[checkpoints] paths", where)
        return cls(paths=paths, learning_rates=_learning_rates(d.get("learning_rates"), where))


def _learning_rates(value: Any, where: str) -> Union[None, float, tuple[Optional[float], ...]]:
    def one(v: Any, name: str) -> Optional[float]:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise _fail(where, f"{name} must be a positive number, got {v!r}")
        return float(v)

    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(one(v, f"[checkpoints] learning_rates[{i}]") for i, v in enumerate(value))
    return one(value, "[checkpoints] learning_rates")


@dataclass(frozen=True)
class DatasetConfig:
    """``[train]`` / ``[test]``: the arguments of :func:`tracin_core.datasets.load_dataset`
    (``kind`` one of its kinds; the others as that function documents them)."""

    kind: str
    root: Optional[str] = None
    split: Optional[str] = None
    path: Optional[str] = None
    labels_override: Optional[str] = None
    flagged: Union[None, str, tuple[str, ...]] = None
    image_size: Optional[int] = None
    labels: Optional[str] = None
    normalize: Optional[tuple[float, float]] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], section: str = "train",
                  where: str = "workspace") -> "DatasetConfig":
        from .datasets import DATASET_KINDS

        d = _table(data, section, cls, where)
        kind = d.get("kind")
        if kind not in DATASET_KINDS:
            raise _fail(where, f"[{section}] kind must be one of {', '.join(DATASET_KINDS)}, "
                               f"got {kind!r}")
        out: dict[str, Any] = {"kind": kind}
        for key in ("root", "split", "path", "labels_override", "labels"):
            out[key] = _optional_string(d.get(key), f"[{section}] {key}", where)
        flagged = d.get("flagged")
        if flagged is not None:
            from .labels_csv import flagged_set

            try:
                flagged_set(flagged)
            except ValueError as exc:
                raise _fail(where, f"[{section}] {exc}") from None
            flagged = flagged if isinstance(flagged, str) else tuple(flagged)
        out["flagged"] = flagged
        size = d.get("image_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise _fail(where, f"[{section}] image_size must be a positive integer, got {size!r}")
        out["image_size"] = size
        norm = d.get("normalize")
        if norm is not None:
            if (not isinstance(norm, (list, tuple)) or len(norm) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in norm)):
                raise _fail(where, f"[{section}] normalize must be [mean, std], got {norm!r}")
            norm = (float(norm[0]), float(norm[1]))
        out["normalize"] = norm
        return cls(**out)

    def load_arguments(self) -> dict[str, Any]:
        """The keyword arguments for ``load_dataset`` (unset fields left out)."""
        args = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "kind" and getattr(self, f.name) is not None}
        if isinstance(args.get("flagged"), tuple):
            args["flagged"] = list(args["flagged"])
        if "normalize" in args:
            args["normalize"] = list(args["normalize"])
        return args


@dataclass(frozen=True)
class LossConfig:
    """``[loss]``: ``name`` (a key of ``tracin_core.workspace.LOSSES``), ``reduction``
    (``"sum"`` or ``"mean"``)."""

    name: str = "cross_entropy"
    reduction: str = "sum"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "workspace") -> "LossConfig":
        from .workspace import LOSSES

        d = _table(data, "loss", cls, where)
        name = d.get("name", "cross_entropy")
        if name not in LOSSES:
            raise _fail(where, f"[loss] name: unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
        reduction = d.get("reduction", "sum")
        if reduction not in ("sum", "mean"):
            raise _fail(where, f"[loss] reduction must be 'sum' or 'mean', got {reduction!r}")
        return cls(name=name, reduction=reduction)


@dataclass(frozen=True)
class EvaluationConfig:
    """``[evaluation]``: ``ground_truth`` (a CSV with ``index`` and ``column``, the true
    label of each training item), optional."""

    ground_truth: Optional[str] = None
    column: str = "true_label"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "workspace") -> "EvaluationConfig":
        d = _table(data, "evaluation", cls, where)
        return cls(ground_truth=_optional_string(d.get("ground_truth"), "[evaluation] ground_truth", where),
                   column=_string(d.get("column", "true_label"), "[evaluation] column", where))


@dataclass(frozen=True)
class WorkspaceConfig:
    """A whole workspace: the tables above plus ``name`` and ``batch_size`` (of the
    training pass). ``base_dir``: the folder relative paths are resolved against (a TOML
    file's folder; None = the current folder); not part of the saved schema's meaning,
    but kept so that a saved copy can be reopened."""

    name: str
    model: ModelConfig
    checkpoints: CheckpointsConfig
    train: DatasetConfig
    test: Optional[DatasetConfig] = None
    loss: LossConfig = field(default_factory=LossConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    batch_size: int = 256
    base_dir: Optional[str] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Optional[PathLike] = None,
                  default_name: str = "workspace", where: str = "workspace") -> "WorkspaceConfig":
        """Check a dict shaped like the TOML file (tables as nested dicts); ``where``
        starts every error message (the file name). ``base_dir`` overrides the dict's."""
        if not isinstance(data, Mapping):
            raise _fail(where, f"a workspace config must be a table, got {type(data).__name__}")
        def required(name: str) -> Mapping[str, Any]:
            if not isinstance(data.get(name), Mapping):
                raise _fail(where, f"missing [{name}] table")
            return data[name]

        # in the file's order of importance: the model's errors first
        model = ModelConfig.from_dict(required("model"), where)
        checkpoints = CheckpointsConfig.from_dict(required("checkpoints"), where)
        train = DatasetConfig.from_dict(required("train"), "train", where)
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        batch = data.get("batch_size", 256)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise _fail(where, f"batch_size must be a positive integer, got {batch!r}")
        test = data.get("test")
        base = base_dir if base_dir is not None else data.get("base_dir")
        return cls(
            name=_string(data.get("name", default_name), "name", where),
            model=model,
            checkpoints=checkpoints,
            train=train,
            test=None if test is None else DatasetConfig.from_dict(test, "test", where),
            loss=LossConfig.from_dict(data.get("loss", {}), where),
            evaluation=EvaluationConfig.from_dict(data.get("evaluation", {}), where),
            batch_size=batch,
            base_dir=None if base is None else str(base),
        )

    @classmethod
    def from_toml(cls, path: PathLike) -> "WorkspaceConfig":
        """Read a workspace ``.toml`` file; relative paths are relative to its folder.
        Errors name the file and the field (``WorkspaceConfigError``)."""
        path = Path(path)
        if path.is_dir():
            found = sorted(p.name for p in path.glob("*.toml"))
            hint = (f": it holds {', '.join(found[:5])}" + (" …" if len(found) > 5 else "")) if found else \
                " (it holds no .toml file)"
            raise WorkspaceConfigError(f"{path}: is a folder; give the workspace .toml file inside it{hint}")
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise WorkspaceConfigError(f"{path}: no such workspace file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise WorkspaceConfigError(f"{path}: not a valid TOML file ({exc})") from None
        return cls.from_dict(data, base_dir=path.resolve().parent, default_name=path.stem,
                             where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (tuples as lists; unset optional fields
        left out), accepted back by :meth:`from_dict`."""
        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items() if v is not None}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))

    def to_json(self, path: PathLike) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, path: PathLike) -> "WorkspaceConfig":
        """Read back what :meth:`to_json` wrote."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise WorkspaceConfigError(f"{path}: not a readable workspace config ({exc})") from None
        return cls.from_dict(data, where=str(path))

    def resolve(self, value: str) -> str:
        """``value`` (a path in this config) made absolute against :attr:`base_dir`."""
        if self.base_dir is None or os.path.isabs(value):
            return value
        return str(Path(self.base_dir) / value)

    def checkpoint_paths(self) -> Union[str, list[str]]:
        """``checkpoints.paths`` resolved against :attr:`base_dir` (a list stays a list)."""
        paths = self.checkpoints.paths
        return [self.resolve(p) for p in paths] if isinstance(paths, tuple) else self.resolve(paths)
