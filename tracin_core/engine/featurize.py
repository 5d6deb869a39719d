"""Per-example quantities that every TracIn score is made of.

One *featurizer* turns a batch into named per-example arrays for one checkpoint;
``run_pass`` walks the data once and calls the featurizer for every checkpoint on
every batch (checkpoint weights are held in memory, swapped with
``torch.func.functional_call``: no checkpoint is reloaded per batch).

A featurizer's arrays are grouped into *terms*; the TracIn score of a test example
``j`` and a training example ``i`` at one checkpoint is the sum over terms of

- ``("factor", a, d)``: ``(a_j · a_i) * (d_j · d_i)`` — a Linear layer whose
  per-example weight gradient is the outer product ``d ⊗ a`` (``a`` the layer
  input, ``d`` the gradient of the loss w.r.t. the layer output, with a column
  of ones appended to ``a`` when the bias is included);
- ``("dense", g)``: ``g_j · g_i`` — a flattened per-example gradient.

Sign convention: scores are ``η_c ⟨∇ℓ'_j, ∇ℓ_i⟩`` summed over checkpoints;
positive = the training example's gradient step lowers the test loss (proponent).
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader

from .allocator import keep_freed_batches
from .errors import TracInArgumentError
from .store import INPUT_SKETCH, SELF, array_name

Term = tuple  # ("factor", a_name, d_name) | ("dense", g_name)

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextmanager
def model_lock(model: nn.Module) -> Iterator[None]:
    """Serialise hook-based computations on one model (shared between app sessions)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(model, threading.RLock())
    with lock:
        yield


# --------------------------------------------------------------------------- batches


def split_batch(batch: Any, device: Optional[torch.device]) -> tuple[tuple, Any]:
    """``batch`` -> ``(model_inputs, labels)`` with tensors moved to ``device``.

    Every batch is a tuple or list: ``model(*batch[:-1])`` gives the outputs and
    ``batch[-1]`` holds the labels.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            "each batch must be a tuple (inputs..., labels) with at least two elements; "
            f"got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    moved = [to_device(x, device) for x in batch]
    return tuple(moved[:-1]), moved[-1]


def to_device(x: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return x
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def batch_size_of(inputs: tuple, labels: Any) -> int:
    if isinstance(labels, Tensor) and labels.dim() > 0:
        return int(labels.shape[0])
    for x in inputs:
        if isinstance(x, Tensor) and x.dim() > 0:
            return int(x.shape[0])
    raise ValueError("cannot tell the batch size: neither the labels nor any input is a tensor")


def as_loader(data: Any, batch_size: Optional[int] = None) -> DataLoader:
    """A DataLoader as-is; a single batch (tuple) becomes a one-batch loader."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)):
        return DataLoader(_OneBatch(tuple(data)), batch_size=None, shuffle=False)
    raise TypeError(
        f"inputs must be a batch tuple (inputs..., labels) or a DataLoader, got {type(data).__name__}"
    )


class _OneBatch(torch.utils.data.Dataset):
    def __init__(self, batch: tuple) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple:
        return self.batch


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Snapshot:
    """One checkpoint's full state (parameters and buffers) and its learning rate."""

    name: str
    state: dict[str, Tensor]
    learning_rate: float


def take_snapshots(
    model: nn.Module,
    checkpoints: Sequence[Any],
    load_func: Callable[[nn.Module, Any], Optional[float]],
    device: Optional[torch.device],
) -> list[Snapshot]:
    """Load each checkpoint once through ``load_func`` and keep a copy of its state."""
    snaps = []
    for ckpt in checkpoints:
        if ckpt is None:
            raise TracInArgumentError("None returned from `checkpoints`, cannot load: checkpoints: None is not a checkpoint")
        lr = load_func(model, ckpt)
        lr = 1.0 if lr is None else float(lr)
        state = {
            k: v.detach().to(device).clone() if device is not None else v.detach().clone()
            for k, v in model.state_dict(keep_vars=False).items()
        }
        snaps.append(Snapshot(str(ckpt), state, lr))
    return snaps


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def resolve_module(model: nn.Module, layer: Any, arg: str) -> tuple[str, nn.Module]:
    """``layer`` (a name or a submodule of ``model``) -> ``(name, module)``."""
    if isinstance(layer, nn.Module):
        for name, mod in model.named_modules():
            if mod is layer:
                return name, mod
        raise ValueError(f"{arg}: the given module is not a submodule of the model")
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(
                f"{arg}: the model has no layer named {layer!r}; its layers are {names}"
            ) from None
    raise TypeError(f"{arg}: expected a layer name or an nn.Module, got {type(layer).__name__}")


# --------------------------------------------------------------------------- loss


def reduction_of(loss_fn: Any) -> str:
    """'sum' | 'mean' | 'none' — Captum's convention: no attribute means 'sum'."""
    if loss_fn is None:
        return "sum"
    red = getattr(loss_fn, "reduction", "sum")
    if red not in ("sum", "mean", "none"):
        raise ValueError(f"loss_fn: unsupported reduction {red!r} (use 'sum', 'mean' or 'none')")
    return red


def total_loss(loss_fn: Any, out: Tensor, labels: Any) -> Tensor:
    """Scalar whose gradient w.r.t. each example's output is that example's term."""
    loss = out if loss_fn is None else loss_fn(out, labels)
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
    return loss.sum() if loss.dim() > 0 else loss


# --------------------------------------------------------------------------- featurizers


class Featurizer:
    """Computes per-example arrays (rows = examples) for one checkpoint."""

    terms: list[Term]
    dims: dict[str, int]

    def prepare(self, model: nn.Module, snap: Snapshot, inputs: tuple, labels: Any) -> None:
        """Plan the layout from one batch (idempotent)."""

    def layout(self, model: nn.Module, snap: Snapshot, inputs: tuple, labels: Any) -> tuple:
        """The batch's model inputs in the memory layout this featurizer runs fastest on
        (called once per batch, before the checkpoints; values are never changed)."""
        return inputs

    def __call__(
        self, model: nn.Module, snap: Snapshot, inputs: tuple, labels: Any, loss_fn: Any
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def batch_arrays(self, inputs: tuple) -> dict[str, Tensor]:
        """Per-example arrays that do not depend on the checkpoint (called once per batch,
        on the batch as the loader gave it); ``run_pass`` stores them under checkpoint 0."""
        return {}


#: the input sketch's width: above it, inputs are projected (:func:`input_sketch`)
SKETCH_DIM = 64
#: images with more pixels than this per channel are average-pooled to it first
SKETCH_POOL_SIDE = 32
_PROJECTIONS: dict[tuple[int, int], Tensor] = {}
_PROJECTIONS_LOCK = threading.Lock()


def sketch_projection(d: int, dim: int = SKETCH_DIM) -> Tensor:
    """The fixed ``(d, dim)`` projection of :func:`input_sketch`: Gaussian entries over
    ``√dim`` drawn from seed 0 (the same in every process, so a resumed pass continues the
    same sketch); cached per shape."""
    with _PROJECTIONS_LOCK:
        key = (int(d), int(dim))
        if key not in _PROJECTIONS:
            gen = torch.Generator().manual_seed(0)
            _PROJECTIONS[key] = torch.randn(key, generator=gen) / float(dim) ** 0.5
        return _PROJECTIONS[key]


def input_sketch(inputs: tuple, dim: int = SKETCH_DIM) -> Optional[Tensor]:
    """A short vector per example that stands for its model inputs, ``(B, D)`` float32 with
    ``D ≤ dim``: the floating-point inputs flattened and joined (images with more than
    ``SKETCH_POOL_SIDE²`` pixels per channel average-pooled to ``SKETCH_POOL_SIDE²`` first),
    then, when wider than ``dim``, multiplied by :func:`sketch_projection` (a random
    projection: distances and angles kept up to a small distortion). None when no input is
    a floating-point tensor with a batch dimension (token ids, say): nothing to sketch.
    Mislabel rankers look for each example's nearest neighbours in it
    (:func:`tracin_core.audit.rankers.neighbour_margin_inputs`)."""
    parts: list[Tensor] = []
    for x in inputs:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0:
            continue
        x = x.detach().float()
        if x.dim() == 4 and x.shape[2] * x.shape[3] > SKETCH_POOL_SIDE ** 2:
            x = torch.nn.functional.adaptive_avg_pool2d(x, SKETCH_POOL_SIDE)
        parts.append(x.reshape(x.shape[0], -1))
    if not parts or any(len(p) != len(parts[0]) for p in parts):
        return None
    z = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if z.shape[1] > dim:
        z = z @ sketch_projection(z.shape[1], dim).to(z.device)
    return z.contiguous()


def self_term(feats: dict[str, Tensor], terms: Sequence[Term]) -> Tensor:
    """Unweighted squared gradient norm per example, from the featurizer's arrays."""
    total: Optional[Tensor] = None
    for term in terms:
        if term[0] == "factor":
            a, d = feats[term[1]], feats[term[2]]
            val = (a * a).sum(1) * (d * d).sum(1)
        else:
            g = feats[term[1]]
            val = (g * g).sum(1)
        total = val if total is None else total + val
    assert total is not None
    return total


def channels_last_enabled() -> bool:
    """False when the environment sets ``TRACIN_CHANNELS_LAST=0`` (run convolutional
    models in the default NCHW layout: for benchmarks and debugging)."""
    from .switches import env_flag

    return env_flag("TRACIN_CHANNELS_LAST")


def _is_image_batch(x: Any) -> bool:
    return isinstance(x, Tensor) and x.dim() == 4 and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def _contiguous(inputs: tuple) -> tuple:
    return tuple(x.contiguous() if isinstance(x, Tensor) else x for x in inputs)


def _to_channels_last(inputs: tuple) -> tuple:
    return tuple(x.contiguous(memory_format=torch.channels_last) if _is_image_batch(x) else x for x in inputs)


def _channels_last_output(_module: nn.Module, _inputs: Any, out: Any) -> Any:
    """Forward hook: a 4-D float output laid out channels-last (the same tensor if it already is)."""
    return out.contiguous(memory_format=torch.channels_last) if _is_image_batch(out) else None


@dataclass
class ChannelsLast:
    """A verified plan to run a convolutional model's forward pass in channels-last layout.

    PyTorch's CPU convolutions and pooling are much faster on channels-last (NHWC)
    tensors than on NCHW ones (the tutorial's CIFAR ``Net``: 22 -> 15 ms per
    512-image forward on 2 cores, bitwise the same outputs). Layout never changes
    values, but a model's ``forward`` may ``.view`` a 4-D activation (the tutorial's
    ``x.view(-1, 16*5*5)``), which fails on a channels-last tensor; so the output of
    ``back`` -- the last module, in call order, that returns a 4-D tensor -- is made
    NCHW-contiguous again. The plan is only adopted after one batch gave the same
    outputs (to float tolerance) both ways; a later failure falls back to NCHW.

    The other modules that return 4-D tensors (``front``) have their outputs made
    channels-last: a one-channel input (grey images) is both NCHW- and NHWC-contiguous, so
    PyTorch keeps the first convolution's output, and everything after it, NCHW. Laid out
    channels-last from there, the Fashion-MNIST CNN's 512-image forward takes 32 instead of
    47-63 ms on 2 cores (its two max-pools: 15 -> 3 and 7 -> 1 ms), bitwise the same outputs.
    Already channels-last outputs are left as they are (no copy).
    """

    back: Optional[nn.Module]
    front: tuple[nn.Module, ...] = ()

    @contextmanager
    def applied(self) -> Iterator[None]:
        handles = [m.register_forward_hook(_channels_last_output) for m in self.front]
        if self.back is not None:
            handles.append(self.back.register_forward_hook(lambda _m, _i, out: out.contiguous()))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def plan(run: Callable[[tuple], list[Tensor]], model: nn.Module, inputs: tuple) -> "Optional[ChannelsLast]":
        """A verified plan for ``model`` on ``inputs``, or None (keep NCHW).

        ``run(inputs)`` performs the featurizer's no-grad forward and returns the
        tensors to compare (model outputs, captured layer inputs).
        """
        if not channels_last_enabled():
            return None
        images = [x for x in inputs if _is_image_batch(x)]
        if not images or any(x.device.type != "cpu" for x in images):
            return None  # measured on CPU only; GPUs keep the user's layout
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            return None
        four_d: list[nn.Module] = []

        def record(m, _i, out):
            if isinstance(out, Tensor) and out.dim() == 4:
                four_d.append(m)

        leaves = [m for m in model.modules() if next(iter(m.children()), None) is None]
        handles = [m.register_forward_hook(record) for m in leaves]
        try:
            ref = run(_contiguous(inputs))
        finally:
            for h in handles:
                h.remove()
        back = four_d[-1] if four_d else None
        plan = ChannelsLast(back=back, front=tuple(m for m in dict.fromkeys(four_d) if m is not back))
        try:
            with plan.applied():
                got = run(_to_channels_last(inputs))
        except Exception:  # noqa: BLE001 - a view or a custom op that needs NCHW: keep NCHW
            return None
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                return None
            tol = 1e-4 * float(r.abs().max()) if r.numel() else 0.0
            if not torch.allclose(g.to(r.dtype), r, rtol=1e-4, atol=tol):
                return None
        return plan


class FinalLayerFeaturizer(Featurizer):
    """TracInCPFast: input ``a`` of ``final_fc_layer`` and ``δ = ∂ℓ/∂(model output)``.

    For 'mean' losses ``δ`` is multiplied by the batch size (per-example gradient).
    """

    terms = [("factor", "a", "d")]

    def __init__(self, layer: nn.Module, keep_outputs: bool = False, keep_input_sketch: bool = False) -> None:
        self.layer = layer
        self.keep_outputs = keep_outputs
        self.keep_input_sketch = keep_input_sketch
        self.dims: dict[str, int] = {}
        self.channels_last: Optional[ChannelsLast] = None
        self._planned = False

    def _forward(self, model, snap, inputs) -> tuple[Any, list[Tensor]]:
        captured: list[Tensor] = []

        def hook(_m, inp, _out):
            captured.append(inp[0].detach())

        handle = self.layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = functional_call(model, snap.state, inputs)
        finally:
            handle.remove()
        return out, captured

    def layout(self, model, snap, inputs, labels):
        if not self._planned:
            self._planned = True

            def run(xs: tuple) -> list[Tensor]:
                out, captured = self._forward(model, snap, xs)
                return [t for t in [out, *captured[-1:]] if isinstance(t, Tensor)]

            self.channels_last = ChannelsLast.plan(run, model, inputs)
        return _to_channels_last(inputs) if self.channels_last is not None else inputs

    def __call__(self, model, snap, inputs, labels, loss_fn):
        plan = self.channels_last
        if plan is not None and any(_is_image_batch(x) for x in inputs):
            try:
                with plan.applied():
                    out, captured = self._forward(model, snap, inputs)
            except RuntimeError:  # e.g. inputs of another shape than the planned batch
                self.channels_last = None
                out, captured = self._forward(model, snap, _contiguous(inputs))
        else:  # (inputs laid out channels-last for an abandoned plan go back to NCHW)
            out, captured = self._forward(model, snap, _contiguous(inputs))
        if not captured:
            raise ValueError("final_fc_layer was not called in the model's forward pass")
        if not isinstance(out, Tensor) or out.dim() == 0:
            raise ValueError("the model must return a tensor with a batch dimension")
        n = out.shape[0]
        with torch.enable_grad():
            out_leaf = out.detach().requires_grad_(True)
            loss = total_loss(loss_fn, out_leaf, labels)
            (d,) = torch.autograd.grad(loss, out_leaf)
        if reduction_of(loss_fn) == "mean":
            d = d * n
        a = captured[-1].reshape(n, -1)
        feats = {"a": a, "d": d.reshape(n, -1)}
        if self.keep_outputs:  # model outputs: losses and margins per checkpoint, no extra pass
            feats["o"] = out.detach().reshape(n, -1)
        self.dims = {k: v.shape[1] for k, v in feats.items()}
        return feats

    def batch_arrays(self, inputs: tuple) -> dict[str, Tensor]:
        if not self.keep_input_sketch:
            return {}
        sketch = input_sketch(inputs)
        return {} if sketch is None else {INPUT_SKETCH: sketch}


def conv2d_patches(a: Tensor, conv: nn.Conv2d) -> Tensor:
    """Input patches of a Conv2d, ``(B, C·kh·kw, L)`` (contiguous), for per-example grads.

    Written by hand (padding + a strided view, one copy) because ``F.unfold`` (im2col)
    is about 10x slower on CPU.
    """
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding  # type: ignore[misc]
    dh, dw = conv.dilation
    ap = torch.nn.functional.pad(a, (pw, pw, ph, ph)) if (ph or pw) else a
    st = ap.stride()
    ho = (ap.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (ap.shape[3] - dw * (kw - 1) - 1) // sw + 1
    patches = ap.as_strided(
        (ap.shape[0], ap.shape[1], kh, kw, ho, wo),
        (st[0], st[1], st[2] * dh, st[3] * dw, st[2] * sh, st[3] * sw),
    )
    return patches.reshape(ap.shape[0], ap.shape[1] * kh * kw, ho * wo)


def conv2d_weight_grads(a: Tensor, d: Tensor, conv: nn.Conv2d, patches: Optional[Tensor] = None) -> Tensor:
    """Per-example Conv2d weight gradients ``(B, O, C·kh·kw)``.

    ``a``: the layer input (B, C, H, W); ``d``: the gradient w.r.t. its output
    (B, O, H', W'); ``patches``: :func:`conv2d_patches` of ``a`` when already known.
    """
    if patches is None:
        patches = conv2d_patches(a, conv)
    return torch.bmm(d.reshape(d.shape[0], d.shape[1], -1), patches.transpose(1, 2))


class GradientFeaturizer(Featurizer):
    """TracInCP: per-example gradients of every selected parameter.

    Linear and Conv2d layers (the bulk of most models) get their per-example
    gradients from ONE batched forward/backward: the gradient w.r.t. each layer's
    output (``δ``, captured by adding a zero tensor to the output) combined with the
    layer's input. Linear layers fed one vector per example are kept as exact
    factors (``a``, ``δ``), far smaller than their weight gradient; convolutions
    contribute ``δ · unfold(input)ᵀ``. Every other selected parameter (norms,
    embeddings, grouped convolutions, shared weights, ...) gets its per-example
    gradient from ``torch.func.vmap(grad(...))``. Examples must not interact inside
    a batch (no BatchNorm in training mode), as for any per-example gradient.
    """

    def __init__(self, model: nn.Module, param_names: Sequence[str]) -> None:
        self.param_names = list(param_names)
        if not self.param_names:
            raise ValueError("layers: the selected layers have no parameters")
        self.planned = False
        # hooked layers: (module name, module, kind 'factor'|'linear'|'conv', has_bias)
        self.hooked: list[tuple[str, nn.Module, str, bool]] = []
        self.generic_names: list[str] = []
        self.terms: list[Term] = []
        self.dims: dict[str, int] = {}
        self._patch_cache: dict[str, tuple[tuple, Tensor, Tensor]] = {}

    # -- planning ---------------------------------------------------------------
    @staticmethod
    def _conv_ok(mod: nn.Module) -> bool:
        return (
            type(mod) is nn.Conv2d
            and mod.groups == 1
            and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str)
        )

    def prepare(self, model, snap, inputs, labels):
        if self.planned:
            return
        selected = set(self.param_names)
        counts: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
        calls: dict[str, list[int]] = {}
        handles = []
        candidates = {}
        for mname, mod in model.named_modules():
            if not (type(mod) is nn.Linear or self._conv_ok(mod)) or f"{mname}.weight" not in selected:
                continue
            own = [p for p in (mod.weight, mod.bias) if p is not None]
            if any(counts.get(id(p), 0) != 1 for p in own):
                continue
            candidates[mname] = mod

            def hook(_m, inp, _out, _name=mname):
                calls.setdefault(_name, []).append(inp[0].dim())

            handles.append(mod.register_forward_hook(hook))
        try:
            with torch.no_grad():
                first = tuple(x[:1] if isinstance(x, Tensor) else x for x in inputs)
                functional_call(model, snap.state, first)
        finally:
            for h in handles:
                h.remove()
        covered: set[str] = set()
        for mname, mod in candidates.items():
            dims = calls.get(mname, [])
            if len(dims) != 1:
                continue  # not called, or called more than once: generic path
            has_bias = mod.bias is not None and f"{mname}.bias" in selected
            if type(mod) is nn.Linear:
                kind = "factor" if dims[0] == 2 else "linear"
            else:
                if dims[0] != 4:
                    continue
                kind = "conv"
            self.hooked.append((mname, mod, kind, has_bias))
            covered.add(f"{mname}.weight")
            if has_bias:
                covered.add(f"{mname}.bias")
        self.generic_names = [n for n in self.param_names if n not in covered]
        dense = 0
        for i, (_, mod, kind, has_bias) in enumerate(self.hooked):
            if kind == "factor":
                self.terms.append(("factor", f"l{i}_a", f"l{i}_d"))
                self.dims[f"l{i}_a"] = mod.in_features + int(has_bias)
                self.dims[f"l{i}_d"] = mod.out_features
            else:
                dense += mod.weight.numel() + (mod.bias.numel() if has_bias else 0)
        dense += sum(snap.state[n].numel() for n in self.generic_names)
        self.sizes = {n: snap.state[n].numel() for n in self.param_names}
        if dense:
            self.terms.append(("dense", "g"))
            self.dims["g"] = dense
        self.planned = True

    # -- computation ------------------------------------------------------------
    def param_gradients(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-example gradient of each selected parameter, ``{name: (n, numel)}``
        (row-major flattening, as ``param.grad.flatten()``), from this featurizer's arrays."""
        out: dict[str, Tensor] = {}
        g = feats.get("g")
        off = 0

        def take(name: str) -> None:
            nonlocal off
            assert g is not None
            out[name] = g[:, off:off + self.sizes[name]]
            off += self.sizes[name]

        for i, (mname, mod, kind, has_bias) in enumerate(self.hooked):
            if kind == "factor":
                a, d = feats[f"l{i}_a"], feats[f"l{i}_d"]
                a_w = a[:, :mod.in_features]
                out[f"{mname}.weight"] = (d.unsqueeze(2) * a_w.unsqueeze(1)).flatten(1)
                if has_bias:
                    out[f"{mname}.bias"] = d
                continue
            take(f"{mname}.weight")
            if has_bias:
                take(f"{mname}.bias")
        for name in self.generic_names:
            take(name)
        return out

    def __call__(self, model, snap, inputs, labels, loss_fn):
        n = batch_size_of(inputs, labels)
        feats: dict[str, Tensor] = {}
        dense_parts: list[Tensor] = []
        if self.hooked:
            dense_parts += self._hooked(model, snap, inputs, labels, loss_fn, n, feats)
        if self.generic_names:
            dense_parts += self._generic(model, snap, inputs, labels, loss_fn, n)
        if dense_parts:
            feats["g"] = torch.cat(dense_parts, dim=1)
        return feats

    def _hooked(self, model, snap, inputs, labels, loss_fn, n, feats) -> list[Tensor]:
        acts: dict[str, Tensor] = {}
        eps: dict[str, Tensor] = {}

        def make_hook(name: str):
            def hook(_m, inp, out):
                e = torch.zeros_like(out, requires_grad=True)
                eps[name] = e
                acts[name] = inp[0].detach()
                return out + e

            return hook

        handles = [mod.register_forward_hook(make_hook(m)) for m, mod, _, _ in self.hooked]
        try:
            with torch.enable_grad():
                out = functional_call(model, snap.state, inputs)
                loss = total_loss(loss_fn, out, labels)
                names = [m for m, _, _, _ in self.hooked]
                grads = torch.autograd.grad(loss, [eps[m] for m in names])
        finally:
            for h in handles:
                h.remove()
        scale = float(n) if reduction_of(loss_fn) == "mean" else 1.0
        dense: list[Tensor] = []
        for i, ((mname, mod, kind, has_bias), d) in enumerate(zip(self.hooked, grads)):
            d = d.detach() * scale if scale != 1.0 else d.detach()
            a = acts[mname]
            if kind == "factor":
                if has_bias:
                    a = torch.cat([a, torch.ones(n, 1, dtype=a.dtype, device=a.device)], dim=1)
                feats[f"l{i}_a"] = a
                feats[f"l{i}_d"] = d
                continue
            if kind == "linear":  # (B, ..., in) inputs: sum of outer products over positions
                a3 = a.reshape(n, -1, a.shape[-1])
                d3 = d.reshape(n, -1, d.shape[-1])
            else:
                dense.append(conv2d_weight_grads(a, d, mod, self._patches(mname, a, mod)).reshape(n, -1))
                if has_bias:
                    dense.append(d.sum((2, 3)))
                continue
            dense.append(torch.bmm(d3.transpose(1, 2), a3).reshape(n, -1))
            if has_bias:
                dense.append(d3.sum(1))
        return dense

    def _patches(self, name: str, a: Tensor, conv: nn.Conv2d) -> Tensor:
        """Conv input patches, reused across checkpoints when the input is the same
        tensor (a first layer reads the batch itself: one copy per batch, not per checkpoint)."""
        key = (a.data_ptr(), tuple(a.shape), tuple(a.stride()), a._version)
        cached = self._patch_cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[2]
        patches = conv2d_patches(a, conv)
        # the entry holds `a` itself, so its memory (and address) cannot be reused meanwhile
        self._patch_cache[name] = (key, a, patches)
        return patches

    def _generic(self, model, snap, inputs, labels, loss_fn, n) -> list[Tensor]:
        state = snap.state
        generic = {k: state[k] for k in self.generic_names}
        frozen = {k: v for k, v in state.items() if k not in generic}
        tensor_pos = [i for i, x in enumerate(inputs) if isinstance(x, Tensor)]

        def per_example(params, xs, y):
            args = list(inputs)
            for pos, x in zip(tensor_pos, xs):
                args[pos] = x.unsqueeze(0)
            out = functional_call(model, (frozen, params), tuple(args))
            yy = y.unsqueeze(0) if isinstance(y, Tensor) else y
            return total_loss(loss_fn, out, yy)

        xs = tuple(inputs[i] for i in tensor_pos)
        label_dim = 0 if isinstance(labels, Tensor) and labels.dim() > 0 else None
        g = vmap(grad(per_example), in_dims=(None, 0, label_dim), randomness="different")(generic, xs, labels)
        return [g[name].reshape(n, -1).detach() for name in self.generic_names]


class ProjectedFeaturizer(Featurizer):
    """TracInCPFastRandProj: ``√η_c · vec((P_δᵀ δ)(P_aᵀ a)ᵀ)`` per checkpoint.

    Without projections the embedding is the flattened ``δ ⊗ a`` (exact Fast scores).
    """

    def __init__(self, base: FinalLayerFeaturizer, proj_d: Optional[Tensor], proj_a: Optional[Tensor]):
        self.base = base
        self.proj_d = proj_d
        self.proj_a = proj_a
        self.terms = [("dense", "e")]
        self.dims: dict[str, int] = {}

    def layout(self, model, snap, inputs, labels):
        return self.base.layout(model, snap, inputs, labels)

    def __call__(self, model, snap, inputs, labels, loss_fn):
        f = self.base(model, snap, inputs, labels, loss_fn)
        e = project_embedding(f["a"], f["d"], self.proj_d, self.proj_a, snap.learning_rate)
        self.dims = {"e": e.shape[1]}
        return {"e": e}


def project_embedding(a: Tensor, d: Tensor, proj_d: Optional[Tensor], proj_a: Optional[Tensor],
                      learning_rate: float) -> Tensor:
    """``√η · vec((P_δᵀ δ)(P_aᵀ a)ᵀ)``: (n, pd·pa) from final-layer inputs ``a`` (n, A) and
    output gradients ``d`` (n, D); without projections the flattened ``δ ⊗ a``."""
    if proj_d is not None and proj_a is not None:
        d = d @ proj_d.to(d)
        a = a @ proj_a.to(a)
    return (d.unsqueeze(2) * a.unsqueeze(1)).flatten(1) * (learning_rate**0.5)


# --------------------------------------------------------------------------- the pass


@dataclass
class Skipped:
    """Stands for a batch already in the store (resumed run): only its size counts."""

    n: int


@dataclass
class PassResult:
    n: int
    batches: int


def run_pass(
    model: nn.Module,
    loader: Iterable[Any],
    snapshots: Sequence[Snapshot],
    featurizer: Featurizer,
    loss_fn: Any,
    consume: Callable[[int, int, dict[str, Tensor]], None],
    device: Optional[torch.device],
    skip: Optional[Callable[[int], bool]] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> PassResult:
    """One pass over ``loader``: for each batch, featurize it at every checkpoint.

    ``consume(batch_index, start_row, arrays)`` receives arrays named
    ``"c{checkpoint}/{name}"`` plus ``"c{checkpoint}/self"`` (unweighted squared
    gradient norm, shape (B, 1)). ``skip(batch_index)`` lets a resumed run pass
    over batches already done (their rows still count).
    """
    start = 0
    bi = -1
    keep_freed_batches()  # per-batch CPU activations reuse freed memory (tracin_core.engine.allocator)
    with model_lock(model), torch.inference_mode(False):
        for bi, batch in enumerate(loader):
            if isinstance(batch, Skipped):
                start += batch.n
                if progress:
                    progress(batch.n)
                continue
            inputs, labels = split_batch(batch, device)
            n = batch_size_of(inputs, labels)
            if skip is not None and skip(bi):
                start += n
                if progress:
                    progress(n)
                continue
            out: dict[str, Tensor] = {array_name(0, k): v for k, v in featurizer.batch_arrays(inputs).items()}
            if snapshots:
                inputs = featurizer.layout(model, snapshots[0], inputs, labels)
            for c, snap in enumerate(snapshots):
                featurizer.prepare(model, snap, inputs, labels)
                feats = featurizer(model, snap, inputs, labels, loss_fn)
                for name, t in feats.items():
                    out[array_name(c, name)] = t
                out[array_name(c, SELF)] = self_term(feats, featurizer.terms).unsqueeze(1)
            consume(bi, start, out)
            start += n
            if progress:
                progress(n)
    return PassResult(n=start, batches=bi + 1)
