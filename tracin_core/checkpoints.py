"""Safe checkpoint loading.

Nothing here unpickles arbitrary objects: ``.pt`` files go through
``torch.load(weights_only=True)`` and ``.safetensors`` through the safetensors
reader. Every failure is a :class:`CheckpointError` whose message names the file
and says what is wrong.
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

PathOrBytes = Union[str, os.PathLike, bytes, bytearray]

#: keys under which training scripts commonly nest the model's state dict
_NESTED_KEYS = ("model_state_dict", "state_dict", "model")
_SAFETENSORS_SUFFIXES = (".safetensors",)


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model.

    The message always names the file (or upload) and the reason.
    """


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds besides its weights."""

    source: str
    learning_rate: Optional[float]  # ``learning_rate`` key, else the optimizer's lr
    epoch: Optional[int]
    sha256: str


def _source_name(path_or_bytes: PathOrBytes, name: Optional[str]) -> str:
    if name:
        return name
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return "<uploaded bytes>"
    return str(path_or_bytes)


def _read_bytes(path_or_bytes: PathOrBytes, source: str) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return bytes(path_or_bytes)
    path = Path(path_or_bytes)
    if not path.exists():
        raise CheckpointError(f"{source}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{source}: is a folder, not a checkpoint file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot be read ({exc.strerror or exc})") from exc


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    header_len = int.from_bytes(data[:8], "little")
    return 0 < header_len <= len(data) - 8 and data[8:9] == b"{"


def _raw_load(data: bytes, source: str) -> Any:
    if not data:
        raise CheckpointError(f"{source}: the file is empty")
    if source.lower().endswith(_SAFETENSORS_SUFFIXES) or _looks_like_safetensors(data):
        try:
            from safetensors.torch import load as st_load

            return st_load(data)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{source}: not a valid safetensors file ({exc})") from exc
    if not (data[:2] == b"PK" or data[:1] == b"\x80"):  # zip archive or (legacy) pickle
        raise CheckpointError(
            f"{source}: not a PyTorch checkpoint or safetensors file (unrecognised format)"
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "weights_only" in text.lower():
            reason = (
                "it is not a plain state dict: it holds Python objects other than tensors "
                "(a pickled model or code) or is corrupt; only state dicts are accepted — save "
                "it with torch.save(model.state_dict(), path)"
            )
        elif "failed finding central directory" in text or "zip" in text.lower():
            reason = "it is not a complete PyTorch checkpoint (truncated or corrupt zip archive)"
        elif isinstance(exc, EOFError):
            reason = "the file ends too early (truncated)"
        else:
            first = text.splitlines()[0][:200] if text else "unreadable"
            reason = f"it is not a PyTorch checkpoint ({type(exc).__name__}: {first})"
        raise CheckpointError(f"{source}: cannot be loaded: {reason}") from exc


def _extract_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                isinstance(v, Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)"
        )
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(
            f"{source}: holds no tensors (expected a state dict, or one under "
            f"{', '.join(repr(k) for k in _NESTED_KEYS)})"
        )
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{source}: state dict keys must be strings, found {bad[:3]!r}")
    return dict(state)


def _metadata(obj: Any) -> tuple[Optional[float], Optional[int]]:
    lr: Optional[float] = None
    epoch: Optional[int] = None
    if isinstance(obj, Mapping):
        raw = obj.get("learning_rate", obj.get("lr"))
        if isinstance(raw, (int, float)) or (isinstance(raw, Tensor) and raw.numel() == 1):
            lr = float(raw)
        else:
            opt = obj.get("optimizer_state_dict", obj.get("optimizer"))
            if isinstance(opt, Mapping):
                groups = opt.get("param_groups")
                if isinstance(groups, (list, tuple)) and groups and isinstance(groups[0], Mapping):
                    g_lr = groups[0].get("lr")
                    if isinstance(g_lr, (int, float)):
                        lr = float(g_lr)
        e = obj.get("epoch")
        if isinstance(e, int):
            epoch = e
    return lr, epoch


def read_checkpoint(
    path_or_bytes: PathOrBytes, name: Optional[str] = None
) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Read a checkpoint safely; return ``(state_dict, info)``.

    ``info.learning_rate`` is the ``learning_rate`` key when present, else the
    first optimizer param group's ``lr``, else ``None``.
    """
    source = _source_name(path_or_bytes, name)
    data = _read_bytes(path_or_bytes, source)
    obj = _raw_load(data, source)
    state = _extract_state_dict(obj, source)
    lr, epoch = _metadata(obj)
    return state, CheckpointInfo(source, lr, epoch, hashlib.sha256(data).hexdigest())


def load_checkpoint(path_or_bytes: PathOrBytes, name: Optional[str] = None) -> dict[str, Tensor]:
    """Return the state dict held by a ``.pt`` or ``.safetensors`` checkpoint.

    Accepts a plain state dict or one nested under ``model_state_dict`` /
    ``state_dict``. Raises :class:`CheckpointError` naming the file otherwise.
    """
    return read_checkpoint(path_or_bytes, name)[0]


def fit_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Check ``state`` against ``model`` (keys and shapes) and return it, adapted.

    A ``module.`` prefix (from ``DataParallel``) is removed when the model has none.
    Raises :class:`CheckpointError` listing missing/unexpected keys and shape mismatches.
    """
    expected = model.state_dict()
    state = dict(state)
    if state and all(k.startswith("module.") for k in state) and not any(
        k.startswith("module.") for k in expected
    ):
        state = {k[len("module."):]: v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]))
    if problems:
        raise CheckpointError(
            f"{source}: does not fit the model {type(model).__name__}: " + ", ".join(problems)
        )
    return state


def load_into_model(model: nn.Module, path_or_bytes: PathOrBytes, name: Optional[str] = None) -> float:
    """Load a checkpoint into ``model`` in place; return its learning rate (1.0 if unknown).

    This is the default ``checkpoints_load_func`` of the TracIn classes.
    """
    state, info = read_checkpoint(path_or_bytes, name)
    state = fit_state_dict(model, state, info.source)
    model.load_state_dict(state, strict=True)
    return 1.0 if info.learning_rate is None else info.learning_rate


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def resolve_checkpoints(checkpoints: Union[str, os.PathLike, Sequence[Any], Iterable[Any]]) -> list:
    """Turn a folder, a glob pattern, one file, a list of paths or an iterator into a list.

    Folders and globs are sorted naturally (``checkpoint-5`` before ``checkpoint-10``),
    as Captum does. Raises ``ValueError`` naming the argument when nothing is found.
    """
    if isinstance(checkpoints, (str, os.PathLike)):
        text = os.fspath(checkpoints)
        if os.path.isdir(text):
            found = [p for p in glob.glob(os.path.join(text, "*")) if os.path.isfile(p)]
            where = f"folder {text!r}"
        elif any(ch in text for ch in "*?["):
            found = [p for p in glob.glob(text) if os.path.isfile(p)]
            where = f"pattern {text!r}"
        elif os.path.isfile(text):
            found = [text]
            where = text
        else:
            raise ValueError(f"checkpoints: {text!r} is not a file, a folder or a glob pattern")
        if not found:
            raise ValueError(f"checkpoints: the {where} holds no checkpoint files")
        return sorted(found, key=_natural_key)
    items = list(checkpoints)
    if not items:
        raise ValueError("checkpoints: the list of checkpoints is empty")
    if all(isinstance(p, (str, os.PathLike)) for p in items):
        items = sorted((os.fspath(p) for p in items), key=_natural_key)
        missing = [p for p in items if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"checkpoints: no such file {missing[0]!r}")
    return items


def file_sha256(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


LoadFunc = Callable[[nn.Module, Any], Optional[float]]
