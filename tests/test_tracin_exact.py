"""Every class and mode against the brute-force float64 reference (tests/reference.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracin_core import KMostInfluentialResults, TracInCP, TracInCPFast, TracInCPFastRandProj
from tests.reference import SmallCNN, TwoInputNet, examples_of, make_checkpoints, reference_scores

N_TRAIN, N_TEST = 23, 5
LRS = [0.5, 1.0, 2.0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


@pytest.fixture(scope="module")
def cnn_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn_ckpts")
    paths = make_checkpoints(SmallCNN, folder, 3, torch.float64, LRS)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_TEST, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N_TRAIN + N_TEST,), generator=g)
    train = TensorDataset(x[:N_TRAIN], y[:N_TRAIN])
    test = (x[N_TRAIN:], y[N_TRAIN:])
    return dict(folder=str(folder), paths=paths, train=train, test=test, x=x, y=y)


def _ref(setup, selector, loss_fn, dtype=torch.float64, model_fn=SmallCNN):
    model = model_fn().to(dtype)
    train = examples_of([setup["x"][:N_TRAIN].to(dtype)], setup["y"][:N_TRAIN])
    test = examples_of([setup["x"][N_TRAIN:].to(dtype)], setup["y"][N_TRAIN:])
    return reference_scores(model, setup["paths"], train, test, loss_fn, selector)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("batch_size", [1, 4, 50])
def test_fast_matches_reference(cnn_setup, reduction, batch_size):
    loss = nn.CrossEntropyLoss(reduction=reduction)
    model = SmallCNN().double()
    tr = TracInCPFast(model, "fc2", cnn_setup["train"], cnn_setup["folder"], loss_fn=loss, batch_size=batch_size)
    scores = tr.influence(cnn_setup["test"])
    selfi = tr.self_influence()
    ref, ref_self = _ref(cnn_setup, lambda m: [m.fc2.weight], nn.CrossEntropyLoss(reduction="sum"))
    assert scores.shape == (N_TEST, N_TRAIN)
    assert rel_err(scores, ref) <= 1e-6
    assert rel_err(selfi, ref_self) <= 1e-6
    assert tr.learning_rates == LRS


@pytest.mark.parametrize(
    "layers,selector",
    [
        (None, lambda m: list(m.parameters())),
        (["conv", "norm"], lambda m: [m.conv.weight, m.conv.bias, m.norm.weight, m.norm.bias]),
        (["fc1"], lambda m: [m.fc1.weight, m.fc1.bias]),
        (["fc2", "conv"], lambda m: [m.fc2.weight, m.fc2.bias, m.conv.weight, m.conv.bias]),
    ],
)
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_tracincp_matches_reference(cnn_setup, layers, selector, reduction):
    model = SmallCNN().double()
    tr = TracInCP(model, cnn_setup["train"], cnn_setup["paths"], layers=layers,
                  loss_fn=nn.CrossEntropyLoss(reduction=reduction), batch_size=7)
    scores = tr.influence(cnn_setup["test"])
    selfi = tr.self_influence()
    ref, ref_self = _ref(cnn_setup, selector, nn.CrossEntropyLoss(reduction="sum"))
    assert rel_err(scores, ref) <= 1e-6
    assert rel_err(selfi, ref_self) <= 1e-6


def test_float32_within_1e4(cnn_setup, tmp_path):
    paths = make_checkpoints(SmallCNN, tmp_path, 3, torch.float32, LRS)
    setup32 = dict(cnn_setup, paths=paths)
    x32 = cnn_setup["x"].float()
    train = TensorDataset(x32[:N_TRAIN], cnn_setup["y"][:N_TRAIN])
    test = (x32[N_TRAIN:], cnn_setup["y"][N_TRAIN:])
    loss = nn.CrossEntropyLoss(reduction="sum")
    ref, ref_self = _ref(setup32, lambda m: list(m.parameters()), loss, dtype=torch.float64)
    tr = TracInCP(SmallCNN(), train, paths, loss_fn=loss, batch_size=8)
    assert rel_err(tr.influence(test), ref) <= 1e-4
    assert rel_err(tr.self_influence(), ref_self) <= 1e-4
    ref_f, ref_fs = _ref(setup32, lambda m: [m.fc2.weight], loss, dtype=torch.float64)
    fast = TracInCPFast(SmallCNN(), "fc2", train, paths, loss_fn=loss, batch_size=8)
    assert rel_err(fast.influence(test), ref_f) <= 1e-4
    assert rel_err(fast.self_influence(), ref_fs) <= 1e-4


def test_two_input_model(tmp_path):
    paths = make_checkpoints(TwoInputNet, tmp_path, 2, torch.float64, [1.0, 0.3])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(15, 4, generator=g, dtype=torch.float64)
    z = torch.randn(15, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (15,), generator=g)
    train = TensorDataset(x[:11], z[:11], y[:11])
    test = (x[11:], z[11:], y[11:])
    loss = nn.CrossEntropyLoss(reduction="mean")
    tr_ex = examples_of([x[:11], z[:11]], y[:11])
    te_ex = examples_of([x[11:], z[11:]], y[11:])
    ref, ref_self = reference_scores(TwoInputNet().double(), paths, tr_ex, te_ex, loss, lambda m: list(m.parameters()))
    tr = TracInCP(TwoInputNet().double(), train, paths, loss_fn=loss, batch_size=4)
    assert rel_err(tr.influence(test), ref) <= 1e-6
    assert rel_err(tr.self_influence(), ref_self) <= 1e-6
    ref_f, ref_fs = reference_scores(TwoInputNet().double(), paths, tr_ex, te_ex, loss, lambda m: [m.out.weight])
    fast = TracInCPFast(TwoInputNet().double(), "out", train, paths, loss_fn=loss, batch_size=4)
    assert rel_err(fast.influence(test), ref_f) <= 1e-6
    assert rel_err(fast.self_influence(), ref_fs) <= 1e-6


def test_test_loss_fn_used_for_test_examples(cnn_setup):
    def first_logit(out, labels):  # a "loss" on the test side only: sum of logit 0
        return out[:, 0].sum()

    loss = nn.CrossEntropyLoss(reduction="sum")
    model = SmallCNN().double()
    tr = TracInCP(model, cnn_setup["train"], cnn_setup["paths"], loss_fn=loss, test_loss_fn=first_logit, batch_size=5)
    train = examples_of([cnn_setup["x"][:N_TRAIN]], cnn_setup["y"][:N_TRAIN])
    test = examples_of([cnn_setup["x"][N_TRAIN:]], cnn_setup["y"][N_TRAIN:])
    ref, _ = reference_scores(SmallCNN().double(), cnn_setup["paths"], train, test, loss,
                              lambda m: list(m.parameters()), test_loss_fn=first_logit)
    assert rel_err(tr.influence(cnn_setup["test"]), ref) <= 1e-6


def test_self_influence_is_diagonal_and_topk_is_argsort(cnn_setup):
    loss = nn.CrossEntropyLoss(reduction="sum")
    for cls_args in [
        (TracInCPFast, dict(final_fc_layer="fc2")),
        (TracInCP, dict(layers=["conv", "fc1"])),
    ]:
        cls, extra = cls_args
        tr = cls(SmallCNN().double(), train_dataset=cnn_setup["train"], checkpoints=cnn_setup["folder"],
                 loss_fn=loss, batch_size=6, **extra)
        x, y = cnn_setup["train"].tensors
        full = tr.influence((x, y))
        assert rel_err(torch.diagonal(full), tr.self_influence()) <= 1e-9
        scores = tr.influence(cnn_setup["test"])
        k = 4
        pro = tr.influence(cnn_setup["test"], k=k, proponents=True)
        opp = tr.influence(cnn_setup["test"], k=k, proponents=False)
        assert isinstance(pro, KMostInfluentialResults)
        assert pro.indices.shape == (N_TEST, k) and pro.indices.dtype == torch.long
        assert torch.equal(pro.indices, torch.argsort(scores, dim=1, descending=True)[:, :k])
        assert torch.equal(opp.indices, torch.argsort(scores, dim=1)[:, :k])
        assert torch.allclose(pro.influence_scores, torch.gather(scores, 1, pro.indices))
        assert torch.all(pro.influence_scores[:, :-1] >= pro.influence_scores[:, 1:])
        assert torch.all(opp.influence_scores[:, :-1] <= opp.influence_scores[:, 1:])
        big = tr.influence(cnn_setup["test"], k=1000)
        assert big.indices.shape == (N_TEST, N_TRAIN)
        assert torch.equal(torch.sort(big.indices, 1).values, torch.arange(N_TRAIN).expand(N_TEST, -1))
        agg = tr.influence(cnn_setup["test"], aggregate=True)
        assert torch.allclose(agg, scores.sum(0, keepdim=True))
        agg_top = tr.influence(cnn_setup["test"], k=3, aggregate=True)
        assert torch.equal(agg_top.indices[0], torch.argsort(agg[0], descending=True)[:3])


@pytest.mark.parametrize("cls,extra", [(TracInCPFast, dict(final_fc_layer="fc2")),
                                       (TracInCP, dict(layers=["conv", "fc1"]))])
def test_many_score_blocks_equal_one_block(cnn_setup, monkeypatch, cls, extra):
    """A tiny block size forces the blockwise merge (top-k over several blocks, matrices
    concatenated from blocks); every result must equal the one-block computation."""
    from tracin_core.engine import scoring
    from tracin_core.engine import tracin as tracin_module

    loss = nn.CrossEntropyLoss(reduction="sum")
    tr = cls(SmallCNN().double(), train_dataset=cnn_setup["train"],
             checkpoints=cnn_setup["folder"], loss_fn=loss, batch_size=6, **extra)
    test = cnn_setup["test"]

    def results():
        return dict(
            scores=tr.influence(test),
            agg=tr.influence(test, aggregate=True),
            pro=tr.influence(test, k=4, proponents=True),
            opp=tr.influence(test, k=4, proponents=False),
            agg_top=tr.influence(test, k=3, aggregate=True),
            every=tr.influence(test, k=1000),
        )

    calls = []
    real_score_block = scoring.score_block

    def counting_score_block(*args, **kwargs):
        calls.append(1)
        return real_score_block(*args, **kwargs)

    monkeypatch.setattr(scoring, "score_block", counting_score_block)
    one = results()  # small query: one score matrix, one block, reused by every call
    assert 0 < len(calls) <= 6  # at most one block per call
    calls.clear()
    # no score cache, and 2 training rows per block: top-k merges 12 blocks
    monkeypatch.setattr(tracin_module, "SCORE_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(scoring, "BLOCK_ELEMENTS", 2 * N_TEST)
    many = results()
    assert len(calls) == 6 * -(-N_TRAIN // 2)  # ceil(23 / 2) = 12 blocks per call
    # float64 products of other shapes may round differently in the last bits
    assert rel_err(many["scores"], one["scores"]) <= 1e-12
    assert rel_err(many["agg"], one["agg"]) <= 1e-12
    for key in ("pro", "opp", "agg_top", "every"):
        assert torch.equal(many[key].indices, one[key].indices), key
        assert rel_err(many[key].influence_scores, one[key].influence_scores) <= 1e-12, key
    # and both are the argsort of the score matrix (indices point at the right rows)
    assert torch.equal(many["pro"].indices,
                       torch.argsort(one["scores"], dim=1, descending=True)[:, :4])
    assert torch.equal(many["opp"].indices, torch.argsort(one["scores"], dim=1)[:, :4])
    assert torch.equal(torch.sort(many["every"].indices, 1).values,
                       torch.arange(N_TRAIN).expand(N_TEST, -1))


def test_dataloader_and_dataset_agree(cnn_setup):
    loss = nn.CrossEntropyLoss(reduction="sum")
    a = TracInCPFast(SmallCNN().double(), "fc2", cnn_setup["train"], cnn_setup["paths"], loss_fn=loss, batch_size=5)
    b = TracInCPFast(SmallCNN().double(), "fc2", DataLoader(cnn_setup["train"], batch_size=9), cnn_setup["paths"],
                     loss_fn=loss, batch_size=None)
    test_loader = DataLoader(TensorDataset(*cnn_setup["test"]), batch_size=2)
    assert torch.allclose(a.influence(cnn_setup["test"]), b.influence(test_loader))
    assert torch.allclose(a.self_influence(), b.self_influence())
    # self-influence of other data, given as a batch or a loader
    assert torch.allclose(a.self_influence(cnn_setup["test"]), b.self_influence(test_loader))


def test_one_checkpoint_file(cnn_setup):
    loss = nn.CrossEntropyLoss(reduction="sum")
    path = cnn_setup["paths"][1]
    tr = TracInCP(SmallCNN().double(), cnn_setup["train"], path, loss_fn=loss, batch_size=4)
    train = examples_of([cnn_setup["x"][:N_TRAIN]], cnn_setup["y"][:N_TRAIN])
    test = examples_of([cnn_setup["x"][N_TRAIN:]], cnn_setup["y"][N_TRAIN:])
    ref, ref_self = reference_scores(SmallCNN().double(), [path], train, test, loss, lambda m: list(m.parameters()))
    assert rel_err(tr.influence(cnn_setup["test"]), ref) <= 1e-6
    assert rel_err(tr.self_influence(), ref_self) <= 1e-6


def test_custom_load_func_learning_rates(cnn_setup):
    calls = []

    def load(model, path):
        calls.append(path)
        model.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"])
        return 3.0

    loss = nn.CrossEntropyLoss(reduction="sum")
    tr = TracInCPFast(SmallCNN().double(), "fc2", cnn_setup["train"], cnn_setup["paths"], load, loss, 6)
    # every checkpoint loaded exactly once, however many queries
    tr.influence(cnn_setup["test"], k=3)
    tr.influence(cnn_setup["test"], k=3, proponents=False)
    tr.self_influence()
    assert len(calls) == 3
    assert tr.learning_rates == [3.0, 3.0, 3.0]
    # the reference with eta = 3 for every checkpoint (the stored rates are 0.5, 1, 2):
    # per checkpoint, its reference (computed with the stored rate) / stored rate * 3
    train = examples_of([cnn_setup["x"][:N_TRAIN]], cnn_setup["y"][:N_TRAIN])
    test = examples_of([cnn_setup["x"][N_TRAIN:]], cnn_setup["y"][N_TRAIN:])
    ref = ref_self = 0
    for path, stored in zip(cnn_setup["paths"], LRS):
        s, si = reference_scores(SmallCNN().double(), [path], train, test, loss,
                                 lambda m: [m.fc2.weight])
        ref, ref_self = ref + s / stored * 3.0, ref_self + si / stored * 3.0
    assert rel_err(tr.influence(cnn_setup["test"]), ref) <= 1e-6
    assert rel_err(tr.self_influence(), ref_self) <= 1e-6
    # and the stored rates would give something else
    stored_ref, stored_self = _ref(cnn_setup, lambda m: [m.fc2.weight], loss)
    assert rel_err(tr.self_influence(), stored_self) > 0.1


def test_tracincp_streaming_equals_stored(cnn_setup):
    loss = nn.CrossEntropyLoss(reduction="sum")
    kept = TracInCP(SmallCNN().double(), cnn_setup["train"], cnn_setup["paths"], loss_fn=loss, batch_size=4)
    streamed = TracInCP(SmallCNN().double(), cnn_setup["train"], cnn_setup["paths"], loss_fn=loss, batch_size=4,
                        feature_memory=0)
    assert torch.allclose(kept.influence(cnn_setup["test"]), streamed.influence(cnn_setup["test"]))
    a = kept.influence(cnn_setup["test"], k=5, proponents=False)
    b = streamed.influence(cnn_setup["test"], k=5, proponents=False)
    assert torch.equal(a.indices, b.indices)
    assert torch.allclose(kept.self_influence(), streamed.self_influence())


def test_randproj_without_projection_equals_fast(cnn_setup):
    loss = nn.CrossEntropyLoss(reduction="sum")
    fast = TracInCPFast(SmallCNN().double(), "fc2", cnn_setup["train"], cnn_setup["paths"], loss_fn=loss, batch_size=5)
    rp = TracInCPFastRandProj(SmallCNN().double(), "fc2", cnn_setup["train"], cnn_setup["paths"], loss_fn=loss,
                              batch_size=5)
    scores = fast.influence(cnn_setup["test"])
    assert rel_err(rp.influence(cnn_setup["test"]), scores) <= 1e-9
    top = rp.influence(cnn_setup["test"], k=4)
    assert torch.allclose(top.influence_scores, torch.gather(scores, 1, top.indices))
    exact = torch.argsort(scores, dim=1, descending=True)[:, :4]
    assert torch.equal(top.indices, exact)  # tiny data: the re-ranked candidates cover everything
    opp = rp.influence(cnn_setup["test"], k=4, proponents=False)
    assert torch.equal(opp.indices, torch.argsort(scores, dim=1)[:, :4])
    with pytest.raises(NotImplementedError, match="TracInCPFast"):
        rp.self_influence()


@pytest.mark.parametrize("proponents", [True, False])
def test_randproj_reranks_four_k_candidates_where_annoy_is_approximate(tmp_path, proponents):
    """One annoy tree over 2,000 low-dimensional embeddings (small leaves): annoy's own
    top-k misses part of the exact top-k, and asking it for 4·k candidates finds better
    ones. The result must be the exact best k of those 4·k candidates."""
    from tracin_core import AnnoyNearestNeighbors

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    path = tmp_path / "c.pt"
    torch.save({"model_state_dict": model.state_dict(), "learning_rate": 1.0}, path)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 4, generator=g), torch.randint(0, 2, (2000,), generator=g)
    test = (torch.randn(6, 4, generator=g), torch.randint(0, 2, (6,), generator=g))
    rp = TracInCPFastRandProj(model, model[0], TensorDataset(x, y), [str(path)],
                              loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=64,
                              nearest_neighbors=AnnoyNearestNeighbors(num_trees=1))
    k, sign = 10, 1.0 if proponents else -1.0
    scores = rp.influence(test)
    top = rp.influence(test, k=k, proponents=proponents)
    emb = rp.compute_intermediate_quantities(test)

    def best_of(n_candidates):
        cand, _ = rp.nearest_neighbors.get_nearest_neighbors(emb * sign, n_candidates)
        rows = []
        for i in range(len(emb)):
            c = torch.unique(cand[i])
            rows.append(c[torch.topk(scores[i, c] * sign, k).indices])
        return torch.stack(rows)

    exact = torch.topk(scores * sign, k, dim=1).indices
    from_k = best_of(k)
    # the precondition: annoy is approximate here (its k best miss part of the exact k)
    assert not torch.equal(torch.sort(from_k, 1).values, torch.sort(exact, 1).values)
    assert torch.equal(top.indices, best_of(4 * k))
    assert torch.allclose(top.influence_scores, torch.gather(scores, 1, top.indices))
    # more candidates re-ranked: never worse than annoy's own k, better somewhere
    got = (torch.gather(scores, 1, top.indices) * sign).sum(1)
    from_k_sum = (torch.gather(scores, 1, from_k) * sign).sum(1)
    assert torch.all(got >= from_k_sum - 1e-5) and torch.any(got > from_k_sum + 1e-5)


def test_randproj_projection_is_seeded_and_shaped(cnn_setup):
    loss = nn.CrossEntropyLoss(reduction="sum")
    kw = dict(loss_fn=loss, batch_size=5, projection_dim=4)
    a = TracInCPFastRandProj(SmallCNN().double(), "fc2", cnn_setup["train"], cnn_setup["paths"], seed=7, **kw)
    b = TracInCPFastRandProj(SmallCNN().double(), "fc2", cnn_setup["train"], cnn_setup["paths"], seed=7, **kw)
    ea = a.compute_intermediate_quantities(cnn_setup["test"])
    # min(floor(sqrt(4)), 3 outputs) * min(floor(sqrt(4)), 5 inputs) = 4 per checkpoint
    assert ea.shape == (N_TEST, 4 * 3)
    assert torch.equal(ea, b.compute_intermediate_quantities(cnn_setup["test"]))
    assert a.influence(cnn_setup["test"]).shape == (N_TEST, N_TRAIN)
    # random projections preserve inner products in expectation: same sign mostly
    fast = TracInCPFast(SmallCNN().double(), "fc2", cnn_setup["train"], cnn_setup["paths"], loss_fn=loss, batch_size=5)
    exact = fast.influence(cnn_setup["test"]).flatten()
    approx = a.influence(cnn_setup["test"]).flatten()
    assert torch.corrcoef(torch.stack([exact, approx]))[0, 1] > 0.3


def test_model_moves_batches_to_its_device(cnn_setup, monkeypatch):
    """Every batch (training pass and test inputs) goes through ``to_device`` with the
    model's device (here the CPU: no device= given). The real move, CPU data to a CUDA
    model, is checked by the GPU suite (tests/test_gpu.py)."""
    from tracin_core.engine import featurize

    seen = []
    real_to_device = featurize.to_device

    def spy(x, device):
        seen.append(device)
        return real_to_device(x, device)

    monkeypatch.setattr(featurize, "to_device", spy)
    loss = nn.CrossEntropyLoss(reduction="sum")
    tr = TracInCPFast(SmallCNN().double(), "fc2", cnn_setup["train"], cnn_setup["paths"], loss_fn=loss,
                      batch_size=5)
    assert tr.device == torch.device("cpu")
    scores = tr.influence(cnn_setup["test"])
    assert scores.device.type == "cpu"
    # the training pass (its own batch size: one batch here) and the test batch, each
    # an (x, y) pair: every element moved, to the model's device
    assert len(seen) >= 4
    assert set(seen) == {torch.device("cpu")}


def odd_layers_model():
    """:class:`OddLayersNet` in eval mode with non-trivial BatchNorm statistics."""
    from tests.reference import OddLayersNet

    m = OddLayersNet()
    m.bn.running_mean.uniform_(-0.5, 0.5)
    m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def odd_layers_setup(tmp_path, n: int, seed: int):
    """Two float64 :func:`odd_layers_model` checkpoints (lr 1.0, 0.5) and ``n`` random examples."""
    paths = make_checkpoints(odd_layers_model, tmp_path, 2, torch.float64, [1.0, 0.5])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return odd_layers_model, paths, x, y


def test_every_gradient_path_matches_reference(tmp_path):
    model_fn, paths, x, y = odd_layers_setup(tmp_path, 14, seed=4)
    loss = nn.CrossEntropyLoss(reduction="mean")
    ref, ref_self = reference_scores(model_fn().double(), paths, examples_of([x[:10]], y[:10]),
                                     examples_of([x[10:]], y[10:]), loss, lambda m: list(m.parameters()))
    tr = TracInCP(model_fn().double(), TensorDataset(x[:10], y[:10]), paths, loss_fn=loss, batch_size=4)
    assert rel_err(tr.influence((x[10:], y[10:])), ref) <= 1e-6
    assert rel_err(tr.self_influence(), ref_self) <= 1e-6
    kinds = {name: kind for name, _, kind, _ in tr._fz.hooked}
    assert kinds == {"c1": "conv", "seq": "linear", "head": "factor"}
    assert {"c2.weight", "bn.weight", "twice.weight"} <= set(tr._fz.generic_names)


def test_bad_arguments_say_what_to_change(cnn_setup):
    loss = nn.CrossEntropyLoss(reduction="sum")
    train, paths = cnn_setup["train"], cnn_setup["paths"]
    with pytest.raises(ValueError, match="final_fc_layer.*no layer named 'fc9'"):
        TracInCPFast(SmallCNN().double(), "fc9", train, paths, loss_fn=loss)
    with pytest.raises(ValueError, match="loss_fn is required"):
        TracInCPFast(SmallCNN().double(), "fc2", train, paths)
    with pytest.raises(ValueError, match="layers: the model has no layer named 'nope'"):
        TracInCP(SmallCNN().double(), train, paths, layers=["nope"], loss_fn=loss)
    with pytest.raises(ValueError, match="non-empty list of layer names"):
        TracInCP(SmallCNN().double(), train, paths, layers="fc1", loss_fn=loss)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TracInCP(SmallCNN().double(), train, paths, loss_fn=loss, batch_size=0)
    with pytest.raises(TypeError, match="train_dataset must be a torch Dataset or DataLoader"):
        TracInCP(SmallCNN().double(), 42, paths, loss_fn=loss)
    with pytest.raises(ValueError, match="checkpoints"):
        TracInCP(SmallCNN().double(), train, "/nonexistent/ckpts", loss_fn=loss)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        TracInCP("model", train, paths, loss_fn=loss)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            TracInCP(SmallCNN().double(), train, paths, loss_fn=loss, device="cuda")
    tr = TracInCPFast(SmallCNN().double(), "fc2", train, paths, loss_fn=loss, batch_size=8)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive int or None"):
            tr.influence(cnn_setup["test"], k=bad_k)
    with pytest.raises(ValueError, match="`inputs` argument is required"):
        tr.influence(None)
    with pytest.raises(TypeError, match="batch tuple"):
        tr.influence(cnn_setup["test"][0])  # a bare tensor, no labels
    with pytest.raises(ValueError, match="projection_dim must be a positive int"):
        TracInCPFastRandProj(SmallCNN().double(), "fc2", train, paths, loss_fn=loss, projection_dim=0)


def _reference_embeddings(model, paths, examples, loss_fn, selector):
    """(n, C·P): η_c · per-example gradient (one example at a time), checkpoints concatenated."""
    import copy

    from tests.reference import _load, per_example_grads

    m = copy.deepcopy(model)
    parts = []
    for path in paths:
        lr = _load(m, path)
        parts.append(lr * per_example_grads(m, list(selector(m)), examples, loss_fn))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("layers,selector", [
    (None, lambda m: list(m.parameters())),
    (["fc2", "conv"], lambda m: [m.fc2.weight, m.fc2.bias, m.conv.weight, m.conv.bias]),
    (["norm", "fc1"], lambda m: [m.norm.weight, m.norm.bias, m.fc1.weight, m.fc1.bias]),
])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_tracincp_intermediate_quantities_match_reference(cnn_setup, layers, selector, reduction):
    loss = nn.CrossEntropyLoss(reduction=reduction)
    tr = TracInCP(SmallCNN().double(), cnn_setup["train"], cnn_setup["paths"], layers=layers, loss_fn=loss,
                  batch_size=7)
    x, y = cnn_setup["test"]
    ref = _reference_embeddings(SmallCNN().double(), cnn_setup["paths"], examples_of([x], y),
                                nn.CrossEntropyLoss(reduction="sum"), selector)
    emb = tr.compute_intermediate_quantities((x, y))
    assert emb.shape == ref.shape
    assert rel_err(emb, ref) <= 1e-6
    agg = tr.compute_intermediate_quantities(DataLoader(TensorDataset(x, y), batch_size=2), aggregate=True)
    assert agg.shape == (1, ref.shape[1]) and rel_err(agg, ref.sum(0, keepdim=True)) <= 1e-6


def test_tracincp_intermediate_quantities_every_gradient_path(tmp_path):
    model_fn, paths, x, y = odd_layers_setup(tmp_path, 5, seed=9)
    loss = nn.CrossEntropyLoss(reduction="sum")
    tr = TracInCP(model_fn().double(), TensorDataset(x, y), paths, loss_fn=loss)
    ref = _reference_embeddings(model_fn().double(), paths, examples_of([x], y), loss, lambda m: list(m.parameters()))
    assert rel_err(tr.compute_intermediate_quantities((x, y)), ref) <= 1e-6
