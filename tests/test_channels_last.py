"""Channels-last planning (tracin_core.engine.featurize.ChannelsLast): convolutional models run
their forward passes in channels-last layout only where that provably gives the same
numbers, and the scores stay those of the brute-force float64 reference."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_core import TracInCPFast, TracInCPFastRandProj
from tracin_core.engine.featurize import ChannelsLast, channels_last_enabled
from tracin_core.audit.models import TutorialCifarNet
from tests.reference import examples_of, make_checkpoints, reference_scores

N_TRAIN, N_TEST = 40, 4
LRS = [0.5, 1.0, 2.0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


class ViewMidNet(nn.Module):
    """Views a conv output in the middle of the network: fails on channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8 * 2, 3)

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        flat = h.view(h.shape[0], -1)
        h2 = torch.tanh(self.conv2(h))
        return self.fc(torch.cat([flat, h2.flatten(1)], 1))


class Reinterpret(nn.Module):
    """Reads its input's memory as if it were NCHW-contiguous (layout-dependent values)."""

    def forward(self, x):
        return torch.as_strided(x, x.shape, torch.empty(x.shape).stride())


class ReinterpretNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.re = Reinterpret()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.re(self.conv(x))).flatten(1))


class SizeDependentNet(nn.Module):
    """Channels-last works for 16x16 inputs but a view breaks it for 8x8 ones."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = self.conv(x)
        if x.shape[-1] == 8:
            h = h.view(h.shape[0], -1).view(h.shape)
        return self.fc(self.pool(torch.relu(h)).flatten(1))


def _setup(tmp_path, model_fn, size, seed=0):
    paths = make_checkpoints(model_fn, tmp_path / "ckpts", len(LRS), torch.float32, LRS, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(N_TRAIN + N_TEST, 3, size, size, generator=g)
    y = torch.randint(0, 3, (N_TRAIN + N_TEST,), generator=g)
    return paths, x, y


def _reference(model_fn, paths, train, test, params=lambda m: [m.fc.weight]):
    """Brute-force float64 scores of ``params`` (Captum's Fast scores: the final layer's weight)."""
    (x_train, y_train), (x_test, y_test) = train, test
    return reference_scores(
        model_fn().double(), paths, examples_of([x_train.double()], y_train), examples_of([x_test.double()], y_test),
        nn.CrossEntropyLoss(reduction="sum"), params,
    )


def _fast(model_fn, paths, x, y, layer, cls=TracInCPFast, **kw):
    model = model_fn()
    tr = cls(model, layer, TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), paths,
             loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=16, **kw)
    return model, tr


def test_tutorial_net_runs_channels_last_with_reference_scores(tmp_path, monkeypatch):
    paths, x, y = _setup(tmp_path, TutorialCifarNet, 32)
    model, tr = _fast(TutorialCifarNet, paths, x, y, "fc3")
    test = (x[N_TRAIN:], y[N_TRAIN:])
    scores, selfi = tr.influence(test), tr.self_influence()
    plan = tr._fz.channels_last
    assert isinstance(plan, ChannelsLast)
    assert plan.back is model.pool2  # the last 4-D output before the model's .view
    train = (x[:N_TRAIN], y[:N_TRAIN])
    w_ref, w_self = _reference(TutorialCifarNet, paths, train, test, lambda m: [m.fc3.weight])
    ref, _ = _reference(TutorialCifarNet, paths, train, test, lambda m: [m.fc3.weight, m.fc3.bias])
    assert rel_err(scores, w_ref) <= 1e-4
    assert rel_err(selfi, w_self) <= 1e-4
    assert not torch.allclose(w_ref, ref)  # the bias term is really left out
    # the same numbers as the NCHW path
    monkeypatch.setenv("TRACIN_CHANNELS_LAST", "0")
    assert not channels_last_enabled()
    _m, tr0 = _fast(TutorialCifarNet, paths, x, y, "fc3")
    torch.testing.assert_close(tr0.influence(test), scores, rtol=1e-5, atol=1e-6 * float(scores.abs().max()))
    assert tr0._fz.channels_last is None


def test_randproj_exact_mode_uses_the_same_plan(tmp_path):
    paths, x, y = _setup(tmp_path, TutorialCifarNet, 32, seed=3)
    model, tr = _fast(TutorialCifarNet, paths, x, y, "fc3", cls=TracInCPFastRandProj, projection_dim=None,
                      nearest_neighbors=None)
    _m, fast = _fast(TutorialCifarNet, paths, x, y, "fc3")
    test = (x[N_TRAIN:], y[N_TRAIN:])
    got = tr.influence(test, k=N_TRAIN)
    assert tr._fz.channels_last is not None
    ref = fast.influence(test, k=N_TRAIN)
    torch.testing.assert_close(got.influence_scores, ref.influence_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_fn", [ViewMidNet, ReinterpretNet], ids=["view-fails", "values-differ"])
def test_models_that_need_nchw_keep_it(tmp_path, model_fn):
    paths, x, y = _setup(tmp_path, model_fn, 8)
    _model, tr = _fast(model_fn, paths, x, y, "fc")
    test = (x[N_TRAIN:], y[N_TRAIN:])
    scores = tr.influence(test)
    assert tr._fz.channels_last is None
    w_ref, _ = _reference(model_fn, paths, (x[:N_TRAIN], y[:N_TRAIN]), test)
    assert rel_err(scores, w_ref) <= 1e-4


def test_reinterpreting_model_really_differs_in_channels_last():
    """The check above is meaningful: this model's outputs depend on the layout."""
    torch.manual_seed(0)
    m = ReinterpretNet().eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(m(x), m(x.contiguous(memory_format=torch.channels_last)))


def test_a_later_failure_falls_back_to_nchw(tmp_path):
    paths, x16, y = _setup(tmp_path, SizeDependentNet, 16)
    model, tr = _fast(SizeDependentNet, paths, x16, y, "fc")
    tr.self_influence()  # the training pass: 16x16 images, channels-last adopted
    assert tr._fz.channels_last is not None
    g = torch.Generator().manual_seed(5)
    x8 = torch.randn(N_TEST, 3, 8, 8, generator=g)
    y8 = torch.randint(0, 3, (N_TEST,), generator=g)
    scores = tr.influence((x8, y8))  # the view fails on channels-last: recomputed in NCHW
    assert tr._fz.channels_last is None
    w_ref, _ = _reference(SizeDependentNet, paths, (x16[:N_TRAIN], y[:N_TRAIN]), (x8, y8))
    assert rel_err(scores, w_ref) <= 1e-4


def test_no_plan_without_convolutions_or_off_cpu():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x = torch.randn(5, 3, 4, 4)

    def run(xs):
        return [mlp(*xs)]

    assert ChannelsLast.plan(run, mlp, (x,)) is None  # no Conv2d
    cnn = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    assert ChannelsLast.plan(lambda xs: [cnn(*xs)], cnn, (x,)) is not None
    assert ChannelsLast.plan(lambda xs: [cnn(*xs)], cnn, (x.double(),)) is None  # float64: kept as is
    assert ChannelsLast.plan(lambda xs: [cnn(*xs)], cnn, (x.to("meta"),)) is None  # not on the CPU


def test_grey_images_run_channels_last_after_the_first_convolution(tmp_path, monkeypatch):
    """A one-channel input is NCHW- and NHWC-contiguous alike, so PyTorch keeps the first
    convolution's output, and all after it, NCHW; the plan lays those activations out
    channels-last (``front``), and the scores stay the brute-force reference's."""
    from tracin_core.audit.models import FashionCNN

    paths = make_checkpoints(FashionCNN, tmp_path / "ckpts", len(LRS), torch.float32, LRS, seed=2)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(N_TRAIN + N_TEST, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (N_TRAIN + N_TEST,), generator=g)
    model, tr = _fast(FashionCNN, paths, x, y, "fc2")
    layouts: list[bool] = []
    model.pool1.register_forward_pre_hook(
        lambda _m, inp: layouts.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
    test = (x[N_TRAIN:], y[N_TRAIN:])
    scores, selfi = tr.influence(test), tr.self_influence()
    plan = tr._fz.channels_last
    assert isinstance(plan, ChannelsLast) and plan.back is model.pool2
    assert model.conv1 in plan.front and model.pool2 not in plan.front
    assert layouts and all(layouts[-3:])  # the passes after the plan: the first pool reads NHWC
    w_ref, w_self = _reference(FashionCNN, paths, (x[:N_TRAIN], y[:N_TRAIN]), test, lambda m: [m.fc2.weight])
    assert rel_err(scores, w_ref) <= 1e-4
    assert rel_err(selfi, w_self) <= 1e-4
    monkeypatch.setenv("TRACIN_CHANNELS_LAST", "0")
    _m, tr0 = _fast(FashionCNN, paths, x, y, "fc2")
    torch.testing.assert_close(tr0.influence(test), scores, rtol=1e-5, atol=1e-6 * float(scores.abs().max()))
