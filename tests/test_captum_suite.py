"""Behaviour Captum's own TracIn tests check (its ``tests/influence/_core/test_tracin_*``),
ported to small self-made data: progress bar texts, exception types, message prefixes,
Dataset vs DataLoader equality, and the top-k result's shape as a tuple.

Captum's own files can also be run against ``tracin_core``: ``tests/run_captum_suite.py``.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracin_core import KMostInfluentialResults, TracInArgumentError, TracInCP, TracInCPFast, TracInCPFastRandProj

N_CKPT = 3


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    for c in range(N_CKPT):
        torch.manual_seed(c)
        torch.save({"model_state_dict": _net().state_dict(), "learning_rate": 0.5 + c},
                   os.path.join(folder, f"checkpoint-{c}.pt"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(23, 5, generator=g, dtype=torch.float64)
    y = torch.randn(23, 2, generator=g, dtype=torch.float64)
    test = (torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64))
    return {"folder": str(folder), "train": TensorDataset(x, y), "test": test}


def _make(cls, setup, data, reduction: str, batch_size: int = 5, **kw):
    net = _net()
    loss = nn.MSELoss(reduction=reduction)
    if cls is TracInCP:
        return cls(net, data, setup["folder"], loss_fn=loss, batch_size=batch_size, **kw)
    return cls(net, list(net.children())[-1], data, setup["folder"], loss_fn=loss, batch_size=batch_size, **kw)


CLASSES = [(TracInCP, "none"), (TracInCPFast, "sum")]


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize("cls,reduction", CLASSES)
def test_self_influence_progress_texts(setup, capsys, cls, reduction):
    """Captum's texts: a bar over batches, and with outer_loop_by_checkpoints an outer bar
    over checkpoints and one batch bar per checkpoint, each reaching 100%."""
    tr = _make(cls, setup, setup["train"], reduction)
    name = cls.__name__
    loader = DataLoader(setup["train"], batch_size=5)
    capsys.readouterr()
    by_batches = tr.self_influence(loader, show_progress=True)
    err = capsys.readouterr().err
    assert err.count(f"Using {name} to compute self influence. Processing batch: 100%") >= 1
    assert "Processing checkpoint" not in err
    by_ckpts = tr.self_influence(loader, show_progress=True, outer_loop_by_checkpoints=True)
    err = capsys.readouterr().err
    assert err.count(f"Using {name} to compute self influence. Processing checkpoint: 100%") >= 1
    assert err.count(f"Using {name} to compute self influence. Processing batch: 100%") >= N_CKPT
    # the checkpoint-outer loop is the same sum, in the same order
    assert torch.equal(by_batches, by_ckpts)
    assert by_batches.shape == (len(setup["train"]),)
    tr.self_influence(loader)  # show_progress=False: silent
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("cls,reduction", CLASSES)
def test_influence_progress_texts_first_and_served_from_store(setup, capsys, cls, reduction):
    """The first call's pass over the training data and every later call served from the
    store each show a bar with Captum's text for that mode."""
    tr = _make(cls, setup, setup["train"], reduction)
    name = cls.__name__
    infl = f"Using {name} to compute influence for training batches: 100%"
    capsys.readouterr()
    tr.influence(setup["test"], k=None, show_progress=True)  # pass + scoring
    assert capsys.readouterr().err.count(infl) >= 1
    other = (setup["test"][0][:2] * 2, setup["test"][1][:2])
    tr.influence(other, k=None, show_progress=True)  # served from the store
    assert capsys.readouterr().err.count(infl) >= 1
    for proponents, word in ((True, "proponents"), (False, "opponents")):
        tr.influence(setup["test"], k=2, proponents=proponents, show_progress=True)
        err = capsys.readouterr().err
        assert err.count(f"Using {name} to perform computation for getting {word}. "
                         "Processing training batches: 100%") >= 1
        assert infl not in err
    tr.self_influence(show_progress=True)  # the training set, from the store
    assert capsys.readouterr().err.count(f"Using {name} to compute self influence. Processing batch: 100%") >= 1
    tr.influence(setup["test"], k=2)
    assert capsys.readouterr().err == ""


def test_self_influence_of_training_set_shows_its_pass(setup, capsys):
    """self_influence() as the first call runs the pass, under the self-influence text."""
    tr = _make(TracInCPFast, setup, setup["train"], "sum")
    capsys.readouterr()
    tr.self_influence(show_progress=True)
    err = capsys.readouterr().err
    assert err.count("Using TracInCPFast to compute self influence. Processing batch: 100%") >= 2  # pass + store


def test_randproj_construction_progress(setup, capsys):
    capsys.readouterr()
    _make(TracInCPFastRandProj, setup, setup["train"], "sum", show_progress=True)
    assert "Using TracInCPFastRandProj to compute embeddings for training batches: 100%" in capsys.readouterr().err


# --------------------------------------------------------------------------- exceptions


@pytest.mark.parametrize("cls,reduction", CLASSES + [(TracInCPFastRandProj, "mean")])
def test_influence_without_inputs_raises_assertion_and_value_error(setup, cls, reduction):
    tr = _make(cls, setup, setup["train"], reduction, batch_size=1)
    for exc in (AssertionError, ValueError, TracInArgumentError):
        with pytest.raises(exc, match="`inputs` argument is required."):
            tr.influence(None, k=None)


def test_argument_errors_are_assertion_errors_too(setup):
    with pytest.raises(AssertionError, match="`batch_size` must be an int"):
        _make(TracInCP, setup, setup["train"], "none", batch_size=None)
    with pytest.raises(AssertionError, match="loss function must not be none"):
        TracInCPFast(_net(), "2", setup["train"], setup["folder"], loss_fn=None)
    tr = _make(TracInCPFast, setup, setup["train"], "sum")
    with pytest.raises(AssertionError, match="k must be a positive int"):
        tr.influence(setup["test"], k=0)
    with pytest.raises(AssertionError, match="None returned from `checkpoints`"):
        TracInCPFast(_net(), "2", setup["train"], [None], loss_fn=nn.MSELoss()).self_influence()
    assert issubclass(TracInArgumentError, ValueError) and issubclass(TracInArgumentError, AssertionError)


# --------------------------------------------------------------------------- messages


def test_invalid_final_fc_layer_message_starts_with_captums(setup):
    with pytest.raises(ValueError) as info:
        TracInCPFast(_net(), "invalid_layer", setup["train"], setup["folder"], loss_fn=nn.MSELoss(), batch_size=1)
    msg = str(info.value)
    assert msg.startswith('Invalid final_fc_layer str: "invalid_layer" provided!')
    assert "its layers are ['0', '1', '2']" in msg  # the clearer text is kept


@pytest.mark.parametrize("cls,reduction", [(TracInCP, "none"), (TracInCPFast, "mean")])
def test_invalid_checkpoints_message_starts_with_captums(setup, tmp_path, cls, reduction):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as info:
        _make(cls, {**setup, "folder": str(empty)}, setup["train"], reduction, batch_size=1)
    msg = str(info.value)
    assert msg.startswith("Invalid checkpoints provided for TracIn class: ")
    assert f"the folder {str(empty)!r} holds no checkpoint files" in msg
    with pytest.raises(ValueError, match=r"^Invalid checkpoints provided for TracIn class: .*is empty"):
        _make(cls, {**setup, "folder": []}, setup["train"], reduction, batch_size=1)


# --------------------------------------------------------------------------- Dataset vs DataLoader


class _ItemDataset(torch.utils.data.Dataset):
    """A plain map-style Dataset (decoded one item at a time, no batch decoder)."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i]


@pytest.mark.parametrize("cls,reduction", [(TracInCP, "mean"), (TracInCPFast, "mean"), (TracInCP, "sum")])
@pytest.mark.parametrize("batch_size", [3, 7])
@pytest.mark.parametrize("plain", [False, True], ids=["TensorDataset", "plain Dataset"])
def test_dataset_with_captum_batching_is_bitwise_the_dataloader(setup, cls, reduction, batch_size, plain):
    """captum_batching=True: a Dataset is read in batches of batch_size, so every result is
    bitwise a DataLoader(dataset, batch_size)'s (Captum's two paths are bitwise equal).
    By default the Dataset is read in larger batches: equal up to rounding."""
    ds = _ItemDataset(setup["train"]) if plain else setup["train"]
    loader = _make(cls, setup, DataLoader(ds, batch_size), reduction, batch_size)
    exact = _make(cls, setup, ds, reduction, batch_size, captum_batching=True)
    default = _make(cls, setup, ds, reduction, batch_size)
    assert exact._pass_loader.batch_size == batch_size and default._pass_loader.batch_size > batch_size
    ref = loader.influence(setup["test"])
    assert torch.equal(exact.influence(setup["test"]), ref)
    assert torch.equal(exact.self_influence(), loader.self_influence())
    a, b = exact.influence(setup["test"], k=4), loader.influence(setup["test"], k=4)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.influence_scores, b.influence_scores)
    torch.testing.assert_close(default.influence(setup["test"]), ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- types


def test_top_k_result_unpacks_like_captums(setup):
    """Not Captum's class (see README "Differences from Captum"), but a NamedTuple with
    Captum's field names and order: unpacking and attribute access work alike."""
    tr = _make(TracInCPFast, setup, setup["train"], "sum")
    res = tr.influence(setup["test"], k=3)
    assert isinstance(res, KMostInfluentialResults) and isinstance(res, tuple)
    assert KMostInfluentialResults._fields == ("indices", "influence_scores")
    indices, scores = res
    assert indices.shape == scores.shape == (4, 3) and indices.dtype == torch.long
    full = tr.influence(setup["test"])
    assert torch.equal(full.gather(1, indices), scores)
