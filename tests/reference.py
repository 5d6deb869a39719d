"""Brute-force TracIn reference: plain autograd, one example at a time.

Used by the tests to check every score the engine computes.
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Optional, Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv + norm + linear layers, input (1, 6, 6)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.LayerNorm(2 * 4 * 4)
        self.fc1 = nn.Linear(32, 5)
        self.fc2 = nn.Linear(5, classes)

    def forward(self, x):
        x = torch.tanh(self.conv(x)).flatten(1)
        x = self.norm(x)
        x = torch.tanh(self.fc1(x))
        return self.fc2(x)


class TwoInputNet(nn.Module):
    """A model called with two inputs: ``model(x, z)``."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.fx = nn.Linear(4, 6)
        self.fz = nn.Linear(2, 6, bias=False)
        self.emb = nn.Embedding(5, 6)
        self.out = nn.Linear(6, classes)

    def forward(self, x, z):
        tok = (z.abs().sum(1) * 10).long() % 5
        h = torch.tanh(self.fx(x) + self.fz(z) + self.emb(tok))
        return self.out(h)


def make_checkpoints(model_fn: Callable[[], nn.Module], folder, count: int, dtype=torch.float64,
                     lrs: Optional[Sequence[float]] = None, seed: int = 0) -> list[str]:
    """Save ``count`` random checkpoints (dicts with model_state_dict + learning_rate)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for c in range(count):
        torch.manual_seed(seed + c)
        m = model_fn().to(dtype)
        path = os.path.join(folder, f"checkpoint-{c}.pt")
        item = {"model_state_dict": m.state_dict()}
        if lrs is not None:
            item["learning_rate"] = float(lrs[c])
        torch.save(item, path)
        paths.append(path)
    return paths


def _load(model: nn.Module, path: str) -> float:
    ck = torch.load(path, weights_only=True)
    model.load_state_dict(ck["model_state_dict"])
    return float(ck.get("learning_rate", 1.0))


def per_example_grads(model: nn.Module, params: Sequence[nn.Parameter], examples, loss_fn) -> torch.Tensor:
    """(n, P): gradient of each example's loss (computed alone) w.r.t. ``params``."""
    rows = []
    for ex in examples:
        inputs, label = ex[:-1], ex[-1]
        out = model(*[x.unsqueeze(0) for x in inputs])
        loss = loss_fn(out, label.unsqueeze(0)).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)
        ]))
    return torch.stack(rows)


def reference_scores(model: nn.Module, paths: Sequence[str], train, test, loss_fn,
                     param_selector: Callable[[nn.Module], Sequence[nn.Parameter]],
                     test_loss_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(influence (n_test, n_train), self-influence (n_train,)) in the model's dtype.

    ``train``/``test`` are lists of examples ``(inputs..., label)``. The loss is
    evaluated on one example at a time, so 'mean' and 'sum' give the same terms.
    """
    test_loss_fn = test_loss_fn or loss_fn
    m = copy.deepcopy(model)
    infl = None
    selfi = None
    for path in paths:
        lr = _load(m, path)
        params = list(param_selector(m))
        g_train = per_example_grads(m, params, train, loss_fn)
        g_test = per_example_grads(m, params, test, test_loss_fn)
        s = lr * g_test @ g_train.T
        si = lr * (g_train * g_train).sum(1)
        infl = s if infl is None else infl + s
        selfi = si if selfi is None else selfi + si
    return infl, selfi


def examples_of(xs: Sequence[torch.Tensor], y: torch.Tensor) -> list[tuple]:
    return [tuple(x[i] for x in xs) + (y[i],) for i in range(len(y))]


class OddLayersNet(nn.Module):
    """Strided/padded/dilated convs, a Linear on (B, T, H) inputs, a Linear used twice,
    a grouped conv and a BatchNorm in eval mode: every per-example gradient path."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 4, 2, dilation=2, groups=2)
        self.bn = nn.BatchNorm2d(4)
        self.seq = nn.Linear(4, 5)
        self.twice = nn.Linear(5, 5)
        self.head = nn.Linear(5, classes)

    def forward(self, x):
        h = torch.tanh(self.bn(self.c2(torch.tanh(self.c1(x)))))  # (B, 4, 1, 1) for 6x6 input
        h = h.flatten(2).transpose(1, 2).expand(-1, 3, -1)  # (B, T=3, 4)
        h = torch.tanh(self.seq(h)).mean(1)  # Linear on 3-D input
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        return self.head(h)
