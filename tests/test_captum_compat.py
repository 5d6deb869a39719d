"""Same scores as Captum 0.9 on the tutorial's Net (captum comes from requirements-bench.txt)."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import tracin_core
from tracin_core.audit.models import TutorialCifarNet

if os.environ.get("TRACIN_REQUIRE_CAPTUM") == "1":
    # CI (.ci/run) installs captum from requirements-bench.txt: missing, these tests fail
    import captum.influence as captum_influence
else:  # a plain `pip install -r requirements.txt` checkout: skipped, and -ra says why
    captum_influence = pytest.importorskip("captum.influence")


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tutorial_ckpts")
    torch.manual_seed(0)
    net = TutorialCifarNet()
    paths = []
    for epoch in range(3):
        with torch.no_grad():  # move the weights a little between "epochs"
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        path = os.path.join(folder, f"checkpoint-{epoch}.pt")
        torch.save({"epoch": epoch, "model_state_dict": net.state_dict(), "loss": 0.0}, path)
        paths.append(path)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(70, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (70,), generator=g)
    return dict(paths=paths, train=TensorDataset(x[:64], y[:64]), test=(x[64:68], y[64:68]))


def load_func(net, path):  # the tutorial's checkpoints_load_func (weights_only for safety)
    net.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"])
    return 1.0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("final", ["fc3", "tutorial_last_child"])
def test_fast_equals_captum(tutorial, reduction, final):
    scores = {}
    for lib in (captum_influence, tracin_core):
        net = TutorialCifarNet()
        layer = net.fc3 if final == "fc3" else list(net.children())[-1]  # the tutorial passes relu4
        tr = lib.TracInCPFast(net, layer, tutorial["train"], tutorial["paths"], load_func,
                              nn.CrossEntropyLoss(reduction=reduction), 16)
        pro = tr.influence(tutorial["test"], k=5, proponents=True)
        opp = tr.influence(tutorial["test"], k=5, proponents=False)
        scores[lib.__name__] = (tr.influence(tutorial["test"]), pro, opp, tr.self_influence())
    ours, theirs = scores["tracin_core"], scores["captum.influence"]
    assert rel_err(ours[0], theirs[0]) <= 1e-4
    assert torch.equal(ours[1].indices, theirs[1].indices)
    assert torch.equal(ours[2].indices, theirs[2].indices)
    assert rel_err(ours[1].influence_scores, theirs[1].influence_scores) <= 1e-4
    assert rel_err(ours[3], theirs[3]) <= 1e-4


def test_tracincp_all_layers_equals_captum_sample_wise(tutorial):
    results = []
    for lib, kw in ((captum_influence, dict(sample_wise_grads_per_batch=True)), (tracin_core, {})):
        tr = lib.TracInCP(TutorialCifarNet(), tutorial["train"], tutorial["paths"], load_func,
                          loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=16, **kw)
        results.append((tr.influence(tutorial["test"]), tr.self_influence()))
    (c_inf, c_self), (o_inf, o_self) = results
    assert rel_err(o_inf, c_inf) <= 1e-4
    assert rel_err(o_self, c_self) <= 1e-4


def test_tracincp_layers_equals_captum(tutorial):
    results = []
    for lib, kw in ((captum_influence, dict(sample_wise_grads_per_batch=True)), (tracin_core, {})):
        tr = lib.TracInCP(TutorialCifarNet(), tutorial["train"], tutorial["paths"], load_func,
                          layers=["conv2", "fc2"], loss_fn=nn.CrossEntropyLoss(reduction="mean"),
                          batch_size=16, **kw)
        results.append(tr.influence(tutorial["test"]))
    assert rel_err(results[1], results[0]) <= 1e-4


@pytest.mark.parametrize("projection_dim", [None, 16])
def test_randproj_embeddings_equal_captum(tutorial, projection_dim):
    from captum.influence._utils.nearest_neighbors import AnnoyNearestNeighbors as CaptumAnnoy

    kw = dict(projection_dim=projection_dim, seed=3)
    cnet = TutorialCifarNet()
    c = captum_influence.TracInCPFastRandProj(
        cnet, cnet.fc3, tutorial["train"], tutorial["paths"], load_func,
        nn.CrossEntropyLoss(reduction="sum"), 16, nearest_neighbors=CaptumAnnoy(10), **kw)
    net = TutorialCifarNet()
    o = tracin_core.TracInCPFastRandProj(
        net, net.fc3, tutorial["train"], tutorial["paths"], load_func,
        nn.CrossEntropyLoss(reduction="sum"), 16, **kw)
    ce = c.compute_intermediate_quantities(tutorial["test"])
    oe = o.compute_intermediate_quantities(tutorial["test"])
    assert ce.shape == oe.shape
    assert rel_err(oe, ce) <= 1e-4
    assert rel_err(o.influence(tutorial["test"]), c.influence(tutorial["test"], k=None)) <= 1e-4


@pytest.mark.parametrize("layers", [None, ["conv2", "fc2"]])
def test_tracincp_intermediate_quantities_equal_captum(tutorial, layers):
    out = []
    for lib, kw in ((captum_influence, dict(sample_wise_grads_per_batch=True)), (tracin_core, {})):
        tr = lib.TracInCP(TutorialCifarNet(), tutorial["train"], tutorial["paths"], load_func, layers=layers,
                          loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=16, **kw)
        out.append((tr.compute_intermediate_quantities(tutorial["test"]),
                    tr.compute_intermediate_quantities(tutorial["test"], aggregate=True)))
    (c, c_agg), (o, o_agg) = out
    assert o.shape == c.shape and o_agg.shape == c_agg.shape == (1, c.shape[1])
    assert rel_err(o, c) <= 1e-4
    assert rel_err(o_agg, c_agg) <= 1e-4
