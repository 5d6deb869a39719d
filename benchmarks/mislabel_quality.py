"""How well does each mislabel ranker find wrong labels? (issues #5 and #11)

For every setting — dataset x training schedule x noise model x noise rate — and every seed:

1. train a model on the clean training labels (the tutorial noise model needs it);
2. mislabel a seeded random 10% or 20% of the training items with a noise model
   (:func:`tracin_core.audit.demo.noisy_labels`):
   ``tutorial`` (Captum's tutorial and the demo: the clean model's most probable *wrong*
   class), ``uniform`` (a random other class), ``pair`` (class ``y`` -> ``y + 1 mod K``);
3. train a fresh model on the noisy labels with the schedule's epochs, keeping its number
   of checkpoints evenly spread over training (:data:`SCHEDULES`);
4. build :class:`tracin_core.audit.rankers.RankerInputs` with ``TracInCPFast`` (last layer:
   per-checkpoint logits, final-layer inputs, self-influence terms) and ``TracInCP`` (all
   layers: self-influence terms; not on Fashion-MNIST, :data:`NO_ALL_LAYERS`) over the
   in-memory checkpoints — one pass each, exactly what a Workspace's feature store holds;
5. score every ranker in :data:`tracin_core.audit.rankers.RANKERS`: ROC AUC (mislabelled vs
   clean) and the share of the mislabels found in the first 10% / 20% of the queue;
6. choose the default's weights leave-one-dataset-out (:func:`lodo`): the default reported
   for a data set is ``rankers.rank_mean`` with weights chosen on the *other* data sets
   (criterion: :func:`select_weights`); the shipped ``rankers.COMBINED_WEIGHTS`` are the
   choice on all data sets.

Datasets: ``digits`` — the demo: its fixed 80/20 split (1437 training images), ``DigitsCNN``,
SGD lr 0.05 momentum 0.9 batch 64, clean model 15 epochs with seed ``s``, noisy model seed
``s + 1``; schedules ``demo`` (30 epochs, checkpoints after 5, 10, ..., 30: with seed 0 and
10% tutorial noise exactly the shipped demo) and ``short`` (10 epochs, a checkpoint each).
``wine`` (3 classes, 142 training rows) and ``breast_cancer`` (2 classes, 455 training
rows) — stratified 80/20 split (``random_state=0``), standardised features, an MLP
``fc1 -> ReLU -> fc2`` (64 hidden units), SGD lr 0.01 momentum 0.9 batch 16, clean model
60 epochs; schedules ``long`` (120 epochs, 6 checkpoints) and ``short`` (40 epochs, 10).
With two classes the three noise models give the same labels, so ``breast_cancer`` runs
``uniform`` only (a flip). ``fashion`` — Fashion-MNIST (``/usr/share/datasets/fashion-mnist``):
a seeded random 10,000 of the 60,000 training images per seed, the 10,000 test images for
accuracy, ``FashionCNN`` with the app's recipe (``demo.FASHION``: SGD lr 0.05 momentum 0.9,
batch 128, clean model 3 epochs); schedules ``short`` (6 epochs, a checkpoint each: the
Fashion workspace's recipe) and ``long`` (12 epochs, 4 checkpoints, every third epoch).

Training everything takes about 25 minutes on 2 CPU cores split over three processes (the
small data sets; Fashion-MNIST seeds 0-2; seeds 3-4 with ``--seed-start 3 --seeds 2``), so
the runs are saved (``--dump DIR``: one ``{dataset}-{schedule}_{noise}_{rate}_{seed}.npz``
per run, keys ``logits, labels, weights, si_fast, si_cp`` (empty when not computed),
``features``, ``inputs`` (the input sketch; runs saved before the pass kept it get it from
:func:`dataset_sketch`), ``truth`` (the clean labels), ``test_acc, clean_acc``) and scored
from there (``--from-dumps DIR``). The digits demo setting also runs seeds 5-19 (``--demo-seeds 20``)
for its found@10% target; they take no part in the choice of weights.

    python benchmarks/mislabel_quality.py --jobs 2 --dump DIR          # train, save, score, report
    python benchmarks/mislabel_quality.py --jobs 2 --dump DIR --dump-only --resume   # train and save only
    python benchmarks/mislabel_quality.py --from-dumps DIR DIR2 --jobs 2   # score saved runs, report
    python benchmarks/mislabel_quality.py --quick --datasets wine --out /tmp/mq.md   # a smoke run
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "mislabel_quality.md"
DATASETS = ("digits", "wine", "breast_cancer", "fashion")
NOISES = ("tutorial", "uniform", "pair")
RATES = (0.1, 0.2)
N_CHECKPOINTS = 6
NO_FEATURES = " (no features)"
TAB_RECIPE = dict(hidden=64, lr=0.01, momentum=0.9, batch_size=16, clean_epochs=60, epochs=120)
FASHION_N_TRAIN = 10_000
#: data sets without the all-layer (TracInCP) pass: on Fashion-MNIST it would add about half
#: to each run's time on 2 CPU cores, and no ranker the targets compare needs it
NO_ALL_LAYERS = frozenset({"fashion"})
#: training schedules of the noisy model per dataset: name -> (epochs, checkpoints evenly spread)
SCHEDULES: dict[str, dict[str, tuple[int, int]]] = {
    "digits": {"demo": (30, 6), "short": (10, 10)},
    "wine": {"long": (120, 6), "short": (40, 10)},
    "breast_cancer": {"long": (120, 6), "short": (40, 10)},
    "fashion": {"short": (6, 6), "long": (12, 4)},
}


# ----------------------------------------------------------------------------- models & data
class TabularMLP(nn.Module):
    """``fc1 -> ReLU -> fc2`` for standardised tabular features; last layer ``fc2``."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def load_data(name: str, seed: int = 0) -> dict[str, Any]:
    """``x, y, x_test, y_test`` tensors, class count and model factory for a dataset
    (``fashion``: a seeded random 10,000 of the 60,000 training images, the 10,000 test images)."""
    if name == "fashion":
        from tracin_core.audit.datasets import load_dataset
        from tracin_core.audit.models import FashionCNN

        tr, te = load_dataset("fashion_mnist", split="train"), load_dataset("fashion_mnist", split="test")
        idx = np.sort(np.random.default_rng(1000 + seed).choice(len(tr), FASHION_N_TRAIN, replace=False))
        x, y = tr.decode_batch(idx.tolist())
        xt, yt = te.decode_batch(range(len(te)))
        return dict(x=x, y=y.clone(), x_test=xt, y_test=yt.clone(), num_classes=10,
                    factory=lambda: FashionCNN(num_classes=10))
    if name == "digits":
        from tracin_core.audit.datasets import load_dataset
        from tracin_core.audit.models import DigitsCNN

        tr, te = load_dataset("digits", split="train"), load_dataset("digits", split="test")
        x = torch.stack([tr[i][0] for i in range(len(tr))])
        xt = torch.stack([te[i][0] for i in range(len(te))])
        return dict(x=x, y=tr.original_labels.clone(), x_test=xt, y_test=te.original_labels.clone(),
                    num_classes=10, factory=lambda: DigitsCNN(num_classes=10))
    from sklearn import datasets as skd
    from sklearn.model_selection import train_test_split

    loader = {"wine": skd.load_wine, "breast_cancer": skd.load_breast_cancer}[name]
    data = loader()
    X, Y = np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.int64)
    tr, te = train_test_split(np.arange(len(Y)), test_size=0.2, random_state=0, stratify=Y)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-12
    f32 = lambda a: torch.from_numpy(((a - mu) / sd).astype(np.float32))  # noqa: E731
    k = int(Y.max()) + 1
    d_in = X.shape[1]
    return dict(x=f32(X[tr]), y=torch.from_numpy(Y[tr]), x_test=f32(X[te]), y_test=torch.from_numpy(Y[te]),
                num_classes=k, factory=lambda: TabularMLP(d_in, k, TAB_RECIPE["hidden"]))


def train_model(factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int,
                lr: float, momentum: float, batch_size: int,
                on_epoch_end: Optional[Callable[[int, nn.Module], None]] = None) -> nn.Module:
    """Seeded SGD on mean cross-entropy: the same loop as ``demo.train_digits_cnn``."""
    torch.manual_seed(seed)
    model = factory()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch_size):
            idx = perm[s:s + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    model.eval()
    return model


def checkpoint_epochs(epochs: int, n: int = N_CHECKPOINTS) -> list[int]:
    return sorted({max(1, int(round(epochs * (k + 1) / n))) for k in range(n)})


def train_with_checkpoints(name: str, data: dict[str, Any], y: torch.Tensor, seed: int, clean: bool,
                           quick: bool, schedule: Optional[str] = None
                           ) -> tuple[nn.Module, list[dict[str, torch.Tensor]], float]:
    """Train (clean: the clean model, seed ``seed``; else the noisy model, seed ``seed + 1``,
    with the epochs and checkpoints of ``SCHEDULES[name][schedule]``)."""
    from tracin_core.audit import demo

    states: list[dict[str, torch.Tensor]] = []
    schedule = schedule or next(iter(SCHEDULES[name]))
    epochs, n_ckpt = SCHEDULES[name][schedule]
    if name == "digits":
        lr, batch, momentum = demo.LEARNING_RATE, demo.BATCH_SIZE, demo.MOMENTUM
        clean_epochs = demo.CLEAN_EPOCHS
    elif name == "fashion":
        lr, batch, momentum = demo.FASHION["learning_rate"], demo.FASHION["batch_size"], demo.MOMENTUM
        clean_epochs = demo.FASHION["clean_epochs"]
    else:
        lr, batch, momentum = TAB_RECIPE["lr"], TAB_RECIPE["batch_size"], TAB_RECIPE["momentum"]
        clean_epochs = TAB_RECIPE["clean_epochs"]
    if clean:
        epochs = clean_epochs
    if quick:
        epochs = max(n_ckpt, epochs // 3)
    keep = set(checkpoint_epochs(epochs, n_ckpt))

    def save(epoch: int, model: nn.Module) -> None:
        if not clean and epoch in keep:
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    run_seed = seed if clean else seed + 1
    if name in ("digits", "fashion"):
        model = demo.train_digits_cnn(data["x"], y, epochs=epochs, seed=run_seed, lr=lr, momentum=momentum,
                                      batch_size=batch, on_epoch_end=save, factory=data["factory"])
    else:
        model = train_model(data["factory"], data["x"], y, epochs=epochs, seed=run_seed, lr=lr,
                            momentum=momentum, batch_size=batch, on_epoch_end=save)
    return model, states, lr


def ranker_inputs(data: dict[str, Any], y_noisy: torch.Tensor, states: list[dict[str, torch.Tensor]],
                  lr: float, all_layers: bool = True):
    """RankerInputs from TracInCPFast / TracInCP stores over in-memory checkpoints (no TracInCP
    pass, ``si_cp=None``, unless ``all_layers``)."""
    from torch.utils.data import TensorDataset

    from tracin_core.audit.rankers import RankerInputs
    from tracin_core.engine.tracin import TracInCP, TracInCPFast

    ds = TensorDataset(data["x"], y_noisy)

    def load(model: nn.Module, state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        return lr

    common = dict(checkpoints_load_func=load, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=256)
    fast = TracInCPFast(data["factory"](), "fc2", ds, states, store_outputs=True, store_input_sketch=True, **common)
    store = fast.train_store()
    cstore = TracInCP(data["factory"](), ds, states, **common).train_store() if all_layers else None
    C = len(states)

    def per_checkpoint(read) -> np.ndarray:
        """``read(c)`` (a store accessor) for every checkpoint, stacked: (C, N, ...) float64."""
        return np.stack([read(c).double().numpy() for c in range(C)])

    return RankerInputs(
        logits=per_checkpoint(store.outputs),
        labels=y_noisy.numpy().copy(),
        weights=np.asarray(fast.learning_rates, dtype=np.float64),
        si_fast=per_checkpoint(store.self_terms),
        si_cp=per_checkpoint(cstore.self_terms) if all_layers else None,
        features=per_checkpoint(store.layer_inputs),
        inputs=store.input_sketch().numpy().copy(),
    )


# ----------------------------------------------------------------------------- one task
def settings_for(name: str, noises: tuple[str, ...], rates: tuple[float, ...]) -> list[tuple[str, float]]:
    ns = [n for n in noises if n == "uniform"] if name == "breast_cancer" else list(noises)
    return [(n, r) for n in ns for r in rates]


def run_task(args: tuple) -> list[tuple[list[dict[str, Any]], np.ndarray, np.ndarray, dict[str, Any]]]:
    """One dataset, seed and schedule: every noise model and rate. Returns per run: its rows (one
    per ranker), component ranks (:func:`component_ranks`), truth (N,) and meta."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_task(*args)
    finally:
        torch.set_num_threads(threads)


def dump_name(dataset: str, schedule: str, noise: str, rate: float, seed: int) -> str:
    """File name of one run's saved inputs: ``{dataset}-{schedule}_{noise}_{rate}_{seed}.npz``."""
    return f"{dataset}-{schedule}_{noise}_{rate}_{seed}.npz"


def _run_task(name: str, seed: int, schedule: str, noises: tuple[str, ...], rates: tuple[float, ...],
              quick: bool, dump: Optional[str], resume: bool = False, dump_only: bool = False) -> list[tuple]:
    from tracin_core.audit import demo

    data = load_data(name, seed)
    t0 = time.perf_counter()
    clean, _, _ = train_with_checkpoints(name, data, data["y"], seed, clean=True, quick=quick)
    with torch.no_grad():
        clean_logits = torch.cat([clean(data["x"][s:s + 1024]) for s in range(0, len(data["x"]), 1024)])
    clean_acc = demo.evaluate(clean, data["x_test"], data["y_test"])
    rows: list[tuple] = []
    for noise, rate in settings_for(name, noises, rates):
        saved = Path(dump) / dump_name(name, schedule, noise, rate, seed) if dump else None
        if resume and saved is not None and saved.exists():
            if not dump_only:
                rows.append(score_dump_for_selection(str(saved)))
            continue
        t1 = time.perf_counter()
        y_noisy_np, _ = demo.noisy_labels(data["y"], rate, noise, seed=seed, num_classes=data["num_classes"],
                                          clean_logits=clean_logits)
        y_noisy = torch.from_numpy(y_noisy_np)
        model, states, lr = train_with_checkpoints(name, data, y_noisy, seed, clean=False, quick=quick,
                                                   schedule=schedule)
        acc = demo.evaluate(model, data["x_test"], data["y_test"])
        t2 = time.perf_counter()
        inp = ranker_inputs(data, y_noisy, states, lr, all_layers=name not in NO_ALL_LAYERS)
        t3 = time.perf_counter()
        if dump:
            Path(dump).mkdir(parents=True, exist_ok=True)
            si_cp = inp.si_cp if inp.si_cp is not None else np.zeros(0)  # empty: not computed
            tmp = Path(dump) / (dump_name(name, schedule, noise, rate, seed) + ".part.npz")
            np.savez(tmp, logits=inp.logits,
                     labels=inp.labels, weights=inp.weights, si_fast=inp.si_fast, si_cp=si_cp,
                     features=inp.features, inputs=inp.inputs, truth=data["y"].numpy(), test_acc=acc,
                     clean_acc=clean_acc)
            os.replace(tmp, Path(dump) / dump_name(name, schedule, noise, rate, seed))  # whole files only
        meta = dict(dataset=name, schedule=schedule, noise=noise, rate=rate, seed=seed, test_acc=acc,
                    clean_acc=clean_acc, train_s=t2 - t1, store_s=t3 - t2)
        truth = y_noisy_np != data["y"].numpy()
        if dump_only:
            continue
        rows.append(with_grid_aucs((score_rankers(inp, data["y"].numpy(), meta), component_ranks(inp), truth, meta)))
    print(f"  {name}/{schedule} seed {seed}: {len(rows)} runs in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)
    return rows


#: score the neighbourhood rankers without features too (their fallback); off: ``--no-fallback``
FALLBACK_ROWS = [True]


def score_rankers(inp: Any, clean_labels: np.ndarray, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per ranker (and per neighbourhood ranker without features): AUC, found@10%/20%."""
    from tracin_core.audit import rankers as rk

    truth = np.asarray(inp.labels) != np.asarray(clean_labels)
    no_features = dataclasses.replace(inp, features=None)
    runs = [(r, r, inp) for r in rk.available(inp.si_cp is not None, True)]
    if FALLBACK_ROWS[0]:
        runs += [(f"{r}{NO_FEATURES}", r, no_features) for r in rk.RANKERS
                 if r in rk.USES_FEATURES and r != "combined"]
    rows = []
    for ranker, name_in_registry, inputs in runs:
        t4 = time.perf_counter()
        scores = rk.compute(name_in_registry, inputs)
        ms = (time.perf_counter() - t4) * 1000
        rows.append(dict(meta, ranker=ranker, auc=rk.roc_auc(scores, truth),
                         f10=rk.found_at(scores, truth, 0.10), f20=rk.found_at(scores, truth, 0.20),
                         ms=ms, n=len(truth), n_mislabelled=int(truth.sum())))
    return rows


# ----------------------------------------------------------------------------- saved inputs
def parse_dump_name(path: Path) -> dict[str, Any]:
    """``dataset, schedule, noise, rate, seed`` from a :func:`dump_name` file name."""
    head, noise, rate, seed = Path(path).stem.rsplit("_", 3)
    dataset, schedule = head.split("-", 1)
    return dict(dataset=dataset, schedule=schedule, noise=noise, rate=float(rate), seed=int(seed))


@functools.lru_cache(maxsize=2)
def dataset_sketch(name: str, seed: int) -> np.ndarray:
    """(N, D) the input sketch (:func:`tracin_core.engine.featurize.input_sketch`) of a data
    set's training inputs, what the TracInCPFast pass stores: for runs saved before the pass
    kept it (their inputs are :func:`load_data`'s, row for row)."""
    from tracin_core.engine.featurize import input_sketch

    x = load_data(name, seed)["x"]
    return torch.cat([input_sketch((x[s:s + 4096],)) for s in range(0, len(x), 4096)]).numpy()


def load_dump(path: Path) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """(RankerInputs, clean labels (N,), meta) from one saved run."""
    from tracin_core.audit.rankers import RankerInputs

    z = np.load(path)
    meta = parse_dump_name(path)
    # the all-layer terms only where every run of the data set has them
    si_cp = z["si_cp"] if "si_cp" in z.files and z["si_cp"].ndim == 2 and meta["dataset"] not in NO_ALL_LAYERS \
        else None
    inputs = z["inputs"] if "inputs" in z.files else dataset_sketch(meta["dataset"], meta["seed"])
    inp = RankerInputs(logits=z["logits"], labels=z["labels"], weights=z["weights"], si_fast=z["si_fast"],
                       si_cp=si_cp, features=z["features"] if "features" in z.files else None, inputs=inputs)
    for key in ("test_acc", "clean_acc"):
        meta[key] = float(z[key]) if key in z.files else float("nan")
    return inp, z["truth"], meta


def component_ranks(inp: Any) -> np.ndarray:
    """(N, M) float32: each :data:`rankers.COMBINABLE` score as ranks scaled to (0, 1]."""
    from tracin_core.audit import rankers as rk

    return np.stack([rk._rank01(rk.compute(n, inp)) for n in rk.COMBINABLE], axis=1).astype(np.float32)


def score_dump(path: str) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, dict[str, Any]]:
    """Every ranker on one saved run, plus its component ranks and truth for the selection."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inp, clean_labels, meta = load_dump(Path(path))
        rows = score_rankers(inp, clean_labels, dict(meta, train_s=float("nan"), store_s=float("nan")))
        return rows, component_ranks(inp), np.asarray(inp.labels) != clean_labels, meta
    finally:
        torch.set_num_threads(threads)


def with_grid_aucs(run: tuple) -> tuple:
    """``run`` with ``meta["grid_aucs"]``: (G,) AUC of every :func:`weight_grid` point."""
    from tracin_core.audit import rankers as rk

    rows, R, truth, meta = run
    meta = dict(meta, grid_aucs=grid_aucs(R, truth, weight_grid(len(rk.COMBINABLE))))
    return rows, R, truth, meta


def score_dump_for_selection(path: str, fallback: bool = True) -> tuple:
    FALLBACK_ROWS[0] = fallback
    return with_grid_aucs(score_dump(path))


# ----------------------------------------------------------------------------- leave-one-dataset-out
GRID_STEP = 0.2
LODO = "default (LODO)"


def weight_grid(m: int, step: float = GRID_STEP) -> np.ndarray:
    """(G, m) every weight vector with entries in multiples of ``step`` summing to 1."""
    units = int(round(1 / step))

    def rec(left: int, slots: int) -> list[list[int]]:
        if slots == 1:
            return [[left]]
        return [[a] + rest for a in range(left, -1, -1) for rest in rec(left - a, slots - 1)]

    return np.array(rec(units, m), dtype=np.float64) / units


def grid_aucs(R: np.ndarray, truth: np.ndarray, W: np.ndarray) -> np.ndarray:
    """(G,) ROC AUC of ``R @ w`` for every row ``w`` of ``W`` (ties averaged)."""
    from scipy.stats import rankdata

    S = R.astype(np.float64) @ W.T
    ranks = rankdata(np.round(S, 9), axis=0)
    npos, nneg = int(truth.sum()), int((~truth).sum())
    return (ranks[truth].sum(0) - npos * (npos + 1) / 2) / (npos * nneg)


def select_weights(aucs: np.ndarray, datasets: np.ndarray, settings: np.ndarray, best_single: np.ndarray,
                   exclude: Optional[str] = None, seeds: Optional[np.ndarray] = None,
                   sizes: Optional[np.ndarray] = None) -> int:
    """Grid index chosen on the runs of every data set but ``exclude``, by the issue's rule read
    as a floor: among the points whose margin is at least :data:`TARGET_MARGIN` in every setting
    (setting = data set x schedule x noise x rate; margin = its mean AUC over seeds minus the best
    of :data:`SINGLES`' mean AUCs), the best mean AUC with data sets weighted equally; then, with
    ``seeds`` and ``sizes``, the one-standard-error rule (Hastie, Tibshirani & Friedman, *The
    Elements of Statistical Learning*, 7.10): the point with the fewest signals among those
    clearing the floor whose mean AUC is within one standard error (over seeds) of the best's,
    the best mean among them. When no point clears the floor: the largest worst margin (ties to
    1e-4: the best mean AUC). Ties: the first index.

    Why not the largest worst margin everywhere: once every candidate clears the floor, that
    spends the whole choice on one setting, usually the noisiest (wine's 14 mislabels a run),
    where differences of 1e-4 are noise. Why the fewest signals within one standard error: a
    signal that adds less than the seeds' own scatter on the data sets it was chosen on is
    fitted to them, not evidence that it helps elsewhere.

    ``aucs``: (runs, G); ``datasets``, ``settings``: (runs,) names; ``best_single``: (runs,)
    the best single signal's mean AUC in the run's setting; ``seeds``: (runs,) the run's seed;
    ``sizes``: (G,) how many signals each point weights."""
    keep = datasets != exclude
    names = list(dict.fromkeys(settings[keep]))
    margins = np.stack([aucs[keep & (settings == s)].mean(0) - best_single[keep & (settings == s)][0]
                        for s in names])
    sets = list(dict.fromkeys(datasets[keep]))
    mean = np.stack([aucs[keep & (datasets == d)].mean(0) for d in sets]).mean(0)
    worst = np.round(margins.min(0), 4)
    feasible = worst >= TARGET_MARGIN
    if not feasible.any():
        return int(np.lexsort((-mean, -worst))[0])
    best = int(np.argmax(np.where(feasible, mean, -np.inf)))
    if seeds is None or sizes is None:
        return best
    kept = sorted(set(seeds[keep].tolist()))
    if len(kept) < 2:
        return best
    # per seed: the mean over data sets (each the mean of its runs with that seed)
    per_seed = np.stack([np.mean([aucs[keep & (datasets == d) & (seeds == s)].mean(0) for d in sets
                                  if (keep & (datasets == d) & (seeds == s)).any()], axis=0) for s in kept])
    se = per_seed[:, best].std(ddof=1) / np.sqrt(len(kept))
    near = np.flatnonzero(feasible & (mean >= mean[best] - se))
    near = near[sizes[near] == sizes[near].min()]
    return int(near[np.argmax(mean[near])])


def weights_str(w: np.ndarray) -> str:
    from tracin_core.audit import rankers as rk

    return ", ".join(f"{n} {x:.1f}" for n, x in zip(rk.COMBINABLE, w) if x > 0)


def lodo(results: list[tuple], grid: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Rows of the leave-one-dataset-out default for every run, and the weights per held-out
    data set (key ``"all"``: chosen on every data set, what :data:`rankers.COMBINED_WEIGHTS` holds).

    ``results``: ``(rows, R, truth, meta)`` per run; selection uses the runs of the reported
    seeds only (``meta["selection"]``)."""
    from tracin_core.audit import rankers as rk

    sel = [r for r in results if r[3].get("selection", True)]
    aucs = np.stack([m["grid_aucs"] for *_, m in sel])
    ds = np.array([m["dataset"] for *_, m in sel])
    st = np.array([f'{m["dataset"]}/{m["schedule"]}/{m["noise"]}/{m["rate"]}' for *_, m in sel])
    single = {}
    for rows, *_, m in sel:
        key = f'{m["dataset"]}/{m["schedule"]}/{m["noise"]}/{m["rate"]}'
        for r in rows:
            if r["ranker"] in SINGLES:
                single.setdefault(key, {}).setdefault(r["ranker"], []).append(r["auc"])
    best = np.array([max(np.mean(v) for v in single[k].values()) for k in st])
    names = list(dict.fromkeys(ds))
    shipped = np.array([rk.COMBINED_WEIGHTS.get(n, 0.0) for n in rk.COMBINABLE])
    # with one data set there is nothing to leave it out for: the shipped weights (a smoke run)
    seeds = np.array([m["seed"] for *_, m in sel])
    sizes = (grid > 0).sum(1)
    chosen = {d: grid[select_weights(aucs, ds, st, best, exclude=d, seeds=seeds, sizes=sizes)] if len(names) > 1
              else shipped / shipped.sum() for d in names}
    chosen["all"] = grid[select_weights(aucs, ds, st, best, seeds=seeds, sizes=sizes)]
    rows = []
    for run_rows, R, truth, meta in results:
        base = run_rows[0]
        # the LODO default, and `combined` with the weights chosen on every data set (what the
        # shipped constants hold once copied from this report)
        for name, w in ((LODO, chosen[meta["dataset"]]), ("combined", chosen["all"])):
            scores = R.astype(np.float64) @ w
            rows.append(dict(base, ranker=name, auc=rk.roc_auc(scores, truth), f10=rk.found_at(scores, truth, 0.10),
                             f20=rk.found_at(scores, truth, 0.20), ms=float("nan")))
    return rows, chosen


# ----------------------------------------------------------------------------- report
def pm(values: Any, pct: bool = False, digits: int = 3) -> str:
    v = np.asarray(values, dtype=np.float64)
    if pct:
        return f"{100 * v.mean():.1f} ± {100 * v.std():.1f}%"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


SINGLES = ("self_influence_fast", "loss_mean", "aum")
TARGET_MARGIN = -0.005
FASHION_TUTORIAL_MARGIN = 0.01
DEMO = ("digits", "demo", "tutorial", 0.1)


def setting_name(ds: str, schedule: str, noise: str, rate: float) -> str:
    return f"{ds} / {schedule} / {noise} / {int(round(rate * 100))}%"


def report(df: Any, chosen: dict[str, np.ndarray], args: argparse.Namespace, seconds: float) -> str:
    """The markdown report: ``df`` has one row per (run, ranker), ``LODO`` rows included."""
    from tracin_core.audit import rankers as rk

    main_seeds = set(range(args.seed_start, args.seed_start + args.seeds))
    demo_df = df[(df.dataset == DEMO[0]) & (df.schedule == DEMO[1]) & (df.noise == DEMO[2]) & (df.rate == DEMO[3])]
    df = df[df.seed.isin(main_seeds)]
    shipped = np.array([rk.COMBINED_WEIGHTS.get(n, 0.0) for n in rk.COMBINABLE])
    shipped = shipped / shipped.sum()
    same = np.allclose(shipped, chosen["all"])
    datasets = [d for d in DATASETS if d in set(df.dataset)]
    lines = [
        "# Mislabel rankers: how many wrong labels each finds, and how early",
        "",
        f"Command: `{args.command}`  ",
        f"Date: {datetime.now():%Y-%m-%d %H:%M}; machine: {platform.machine()}, {os.cpu_count()} logical CPUs; "
        f"torch {torch.__version__}; wall time of this command {seconds / 60:.1f} min"
        + (" (scoring saved runs; the training runs that saved them: see the docstring)" if args.from_dumps else "")
        + ".  ",
        f"Seeds: {', '.join(map(str, sorted(df.seed.unique())))} (mean ± std over seeds). "
        "AUC: ROC AUC of the score for mislabelled vs clean; found@10% / found@20%: share of the "
        "mislabels among the first 10% / 20% of the queue (with a 10% noise rate, 100% found@10% "
        "means a perfect queue).  ",
        "Recipes, schedules and noise models: see the docstring of `benchmarks/mislabel_quality.py`. "
        "`digits / demo / tutorial / 10%` with seed 0 is exactly the shipped demo.",
        "",
        "## The default and the leave-one-dataset-out rule",
        "",
        f"The default ranking (`DEFAULT_RANKER` = `{rk.DEFAULT_RANKER}`) is `rank_mean`: a weighted mean of the "
        f"rank-normalised scores of {', '.join(f'`{n}`' for n in rk.COMBINABLE)}. Its weights are the point of a grid "
        f"(multiples of {GRID_STEP}, summing to 1; {len(weight_grid(len(rk.COMBINABLE)))} points) chosen by the issue's own "
        f"rule read as a floor: among the points whose ROC AUC, in every setting (data set x schedule x noise x rate, "
        f"mean over seeds), is at least the best of the three single signals below minus {-TARGET_MARGIN}, the best mean AUC "
        "(data sets weighted equally); then the one-standard-error rule: of the points within one standard error "
        "(over seeds) of that best mean, the one with the fewest signals (were there no point above the floor, "
        "the largest worst margin).",
        "",
        "**Leave-one-dataset-out:** the default reported for a data set (`" + LODO + "` in every table below, and "
        "the one the targets are judged on) uses the weights chosen on the *other* data sets only; it never saw "
        "the data set it is reported on. The shipped weights (`rankers.COMBINED_WEIGHTS`, ranker `combined`) are "
        "chosen the same way on all data sets; `combined` is shown for reference.",
        "",
        "| weights chosen without | weights |",
        "|---|---|",
    ]
    for d in datasets:
        lines.append(f"| {d} | {weights_str(chosen[d])} |")
    lines.append(f"| (none: all data sets, shipped) | {weights_str(chosen['all'])} |")
    lines += ["", f"`rankers.COMBINED_WEIGHTS` = {{{weights_str(shipped)}}}: "
              + ("the same as the selection on all data sets." if same else
                 "**differs from the selection on all data sets** (update `rankers.COMBINED_WEIGHTS`)."), ""]

    # ---- summary against the three named single signals
    lines += [
        "## Summary: the default (leave-one-dataset-out) vs the best single signal",
        "",
        f"Best single signal: the best mean AUC of {', '.join(f'`{n}`' for n in SINGLES)} (self-influence "
        "Fast, averaged loss, AUM) in that setting. Target: default ≥ best single − 0.005 everywhere; on "
        "Fashion-MNIST with tutorial noise, default ≥ best single + 0.01.",
        "",
        "| setting | n (mislabelled) | test acc. noisy / clean model | default AUC | default found@10% | "
        "best single (AUC) | default − best single | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    groups = list(df.groupby(["dataset", "schedule", "noise", "rate"], sort=False))
    for (ds, sch, noise, rate), g in groups:
        means = g.groupby("ranker")[["auc", "f10"]].mean()
        d = g[g.ranker == LODO]
        best = means.loc[list(SINGLES)].auc.idxmax()
        margin = means.auc[LODO] - means.auc[best]
        need = FASHION_TUTORIAL_MARGIN if (ds == "fashion" and noise == "tutorial") else TARGET_MARGIN
        ok = margin >= need - 1e-12
        checks.append((setting_name(ds, sch, noise, rate), ok, margin, need))
        lines.append(
            f"| {setting_name(ds, sch, noise, rate)} | {int(g.n.iloc[0])} ({int(g.n_mislabelled.iloc[0])}) | "
            f"{g.test_acc.mean():.3f} / {g.clean_acc.mean():.3f} | {pm(d.auc, digits=4)} | {pm(d.f10, pct=True)} | "
            f"{best} ({means.auc[best]:.4f}) | {margin:+.4f} | ≥ {need:+.3f}: {'met' if ok else '**not met**'} |")
    lines += ["", "## Targets (issue #11)", ""]
    loose = [c for c in checks if c[2] < TARGET_MARGIN - 1e-12]
    lines.append(f"- default ≥ best single signal − 0.005 on every data set x noise x rate x schedule: "
                 f"{len(checks) - len(loose)} of {len(checks)} settings"
                 + (" (met)." if not loose else "; **not met** in "
                    + ", ".join(f"{c[0]} ({c[2]:+.4f})" for c in loose) + "."))
    strict = [c for c in checks if c[3] == FASHION_TUTORIAL_MARGIN]
    if strict:
        bad = [c for c in strict if not c[1]]
        lines.append(f"- Fashion-MNIST with tutorial noise, default ≥ best single signal + 0.01: "
                     f"{len(strict) - len(bad)} of {len(strict)} settings"
                     + (" (met)." if not bad else "; **not met** in "
                        + ", ".join(f"{c[0]} ({c[2]:+.4f})" for c in bad) + "."))
    if len(demo_df):
        dd = demo_df[demo_df.ranker == LODO]
        sh = demo_df[demo_df.ranker == "combined"]
        nv = demo_df[demo_df.ranker == "neighbour_vote"]
        f10 = dd.f10.mean()
        lines.append(f"- digits demo setting (digits / demo / tutorial / 10%), {dd.seed.nunique()} seeds "
                     f"({dd.seed.min()}-{dd.seed.max()}): default (LODO) found@10% = {100 * f10:.1f}% "
                     f"(target ≥ 95%: {'met' if f10 >= 0.95 else '**not met**'}), AUC = {dd.auc.mean():.4f}; "
                     f"shipped `combined` {100 * sh.f10.mean():.1f}% (AUC {sh.auc.mean():.4f}); `neighbour_vote` "
                     f"{100 * nv.f10.mean():.1f}% (AUC {nv.auc.mean():.4f}).")

    # ---- per data set
    order = [LODO] + [r for r in df.groupby("ranker").auc.mean().sort_values(ascending=False).index if r != LODO]
    def per_dataset(column: str, title: str, fmt: Callable[[float], str]) -> None:
        means = df.groupby(["dataset", "ranker"])[column].mean().unstack("dataset")
        lines.extend(["", title, "", "| ranking | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)])
        for r in order:
            lines.append(f"| {r} | " + " | ".join("—" if np.isnan(means.loc[r, d]) else fmt(means.loc[r, d])
                                                 for d in datasets) + " |")

    per_dataset("auc", "## Mean ROC AUC per data set (mean over its noise models, rates, schedules and seeds)",
                lambda v: f"{v:.4f}")
    per_dataset("f10", "Found in the first 10% of the queue (same means):", lambda v: f"{100 * v:.1f}%")
    for d in datasets:
        g = df[df.dataset == d]
        worst = g.groupby(["schedule", "noise", "rate", "ranker"]).auc.mean().groupby("ranker").min()
        means = g.groupby("ranker")[["auc", "f10", "f20"]].mean()
        ms = g.groupby("ranker").ms.median()
        lines += ["", f"### {d}: every ranker, mean over its settings", "",
                  "| ranker | mean AUC | mean found@10% | mean found@20% | worst setting's mean AUC | ms per call |",
                  "|---|---|---|---|---|---|"]
        for r in means.sort_values("auc", ascending=False).index:
            lines.append(f"| {r} | {means.auc[r]:.4f} | {100 * means.f10[r]:.1f}% | {100 * means.f20[r]:.1f}% | "
                         f"{worst[r]:.4f} | {'—' if np.isnan(ms[r]) else f'{ms[r]:.1f}'} |")

    lines += ["", "## Every setting", ""]
    for (ds, sch, noise, rate), g in groups:
        lines += [f"### {setting_name(ds, sch, noise, rate)} "
                  f"({int(g.n.iloc[0])} training items, {int(g.n_mislabelled.iloc[0])} mislabelled; "
                  f"noisy model's test accuracy {pm(g.drop_duplicates('seed').test_acc)})", "",
                  "| ranker | ROC AUC | found@10% | found@20% |", "|---|---|---|---|"]
        for r in g.groupby("ranker").auc.mean().sort_values(ascending=False).index:
            h = g[g.ranker == r]
            mark = " **(default)**" if r == LODO else ""
            lines.append(f"| {r}{mark} | {pm(h.auc, digits=4)} | {pm(h.f10, pct=True)} | {pm(h.f20, pct=True)} |")
        lines.append("")
    lines += ["## Rankers", "", f"- `{LODO}`: `rank_mean` with the weights chosen without the data set reported "
              "(see above)."] + [f"- `{n}`: {desc}" for n, (_, desc) in rk.RANKERS.items()]
    if df.ranker.str.endswith(NO_FEATURES).any():
        lines += [f"- `<name>{NO_FEATURES}`: the same ranker with `RankerInputs.features=None` (logits as embeddings)."]
    else:
        lines += ["- (`--no-fallback`: the neighbourhood rankers' rows without features were not computed.)"]
    lines += ["", "Self-influence over all layers (`self_influence_cp`) is not computed on Fashion-MNIST "
              "(`NO_ALL_LAYERS`: the TracInCP pass would add about half to each run's time on 2 CPU cores): "
              "— in its tables."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--noise", nargs="+", default=list(NOISES), choices=NOISES)
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    p.add_argument("--schedules", nargs="+", default=None,
                   help="only these training schedules (names in SCHEDULES; default all)")
    p.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    p.add_argument("--seed-start", type=int, default=0,
                   help="first seed (default 0): seeds S..S+N-1; e.g. --seed-start 5 --seeds 10 for held-out seeds")
    p.add_argument("--demo-seeds", type=int, default=20,
                   help="seeds of the digits demo setting for the found@10%% target (default 20: S..S+19; "
                        "only that setting runs the extra seeds, and they take no part in choosing weights)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--quick", action="store_true", help="1 seed, a third of the epochs: a smoke run")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown report (default {DEFAULT_OUT})")
    p.add_argument("--csv", type=Path, default=None, help="also write every (setting, seed, ranker) row")
    p.add_argument("--dump", type=str, default=None, help="save every RankerInputs as .npz in this folder")
    p.add_argument("--dump-only", action="store_true",
                   help="with --dump: train and save the runs, score nothing (score them later with --from-dumps)")
    p.add_argument("--resume", action="store_true",
                   help="with --dump: a run whose file is already there is scored from it, not trained again")
    p.add_argument("--no-fallback", action="store_true",
                   help="with --from-dumps: skip the neighbourhood rankers' no-features rows (a third of the time)")
    p.add_argument("--save-results", type=Path, default=None, metavar="FILE",
                   help="pickle the scored runs here (to redo the selection and report with --load-results)")
    p.add_argument("--load-results", nargs="+", type=Path, default=None, metavar="FILE",
                   help="score nothing: the runs pickled by --save-results (several files are merged)")
    p.add_argument("--from-dumps", nargs="+", type=Path, default=None, metavar="DIR",
                   help="train nothing: score the runs saved by --dump in these folders")
    args = p.parse_args(argv)
    args.command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        args.seeds, args.demo_seeds = 1, 1
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    demo_seeds = [s for s in range(args.seed_start, args.seed_start + args.demo_seeds) if s not in seeds]
    t0 = time.perf_counter()
    pool = None
    if args.jobs > 1:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"))
    mapper = pool.map if pool is not None else map
    try:
        if args.load_results:
            import pickle

            merged: dict[tuple, tuple] = {}
            for f in args.load_results:  # later files win for the same run
                for run in pickle.loads(f.read_bytes()):
                    m = run[3]
                    merged[(m["dataset"], m["schedule"], m["noise"], m["rate"], m["seed"])] = run
            results = list(merged.values())
        elif args.from_dumps:
            files = []
            for folder in args.from_dumps:
                for f in sorted(Path(folder).glob("*.npz")):
                    if f.name.endswith(".part.npz"):  # a run being written
                        continue
                    m = parse_dump_name(f)
                    is_demo = (m["dataset"], m["schedule"], m["noise"], m["rate"]) == DEMO
                    if (m["dataset"] in args.datasets and m["noise"] in args.noise and m["rate"] in args.rates
                            and (args.schedules is None or m["schedule"] in args.schedules)
                            and (m["seed"] in seeds or (is_demo and m["seed"] in demo_seeds))):
                        files.append(str(f))
            if not files:
                raise SystemExit(f"--from-dumps: no saved runs match in {', '.join(map(str, args.from_dumps))}")
            files.sort(key=lambda f: not Path(f).name.startswith("fashion"))  # the slow ones first
            results = list(mapper(score_dump_for_selection, files, [not args.no_fallback] * len(files)))
        else:
            tasks = [(d, s, sch, tuple(args.noise), tuple(args.rates), args.quick, args.dump, args.resume,
                      args.dump_only)
                     for d in args.datasets for s in seeds for sch in SCHEDULES[d]
                     if args.schedules is None or sch in args.schedules]
            if "digits" in args.datasets and "tutorial" in args.noise and 0.1 in args.rates and \
                    (args.schedules is None or DEMO[1] in args.schedules):
                tasks += [("digits", s, DEMO[1], ("tutorial",), (0.1,), args.quick, args.dump, args.resume,
                      args.dump_only)
                          for s in demo_seeds]
            # slow tasks (fashion, digits) first so the pool stays busy
            tasks.sort(key=lambda t: ("fashion", "digits").index(t[0]) if t[0] in ("fashion", "digits") else 2)
            results = [run for runs in mapper(run_task, tasks) for run in runs]
            if args.dump_only:
                print(f"saved {len(tasks)} tasks' runs in {args.dump} ({(time.perf_counter() - t0) / 60:.1f} min)",
                      file=sys.stderr)
                return 0
    finally:
        if pool is not None:
            pool.shutdown()
    if args.save_results:
        import pickle

        args.save_results.write_bytes(pickle.dumps(results))
    for _, _, _, meta in results:
        meta["selection"] = meta["seed"] in seeds
    # `combined` is recomputed with the weights this run chooses (below)
    results = [([r for r in rows if r["ranker"] != "combined"], R, truth, meta) for rows, R, truth, meta in results]
    from tracin_core.audit import rankers as rk

    lodo_rows, chosen = lodo(results, weight_grid(len(rk.COMBINABLE)))
    seconds = time.perf_counter() - t0
    import pandas as pd

    df = pd.DataFrame([r for rows, *_ in results for r in rows] + lodo_rows)
    df["_d"] = df.dataset.map({d: i for i, d in enumerate(DATASETS)})
    df["_n"] = df.noise.map({n: i for i, n in enumerate(NOISES)})
    df["_s"] = df.apply(lambda r: list(SCHEDULES[r.dataset]).index(r.schedule), axis=1)
    df = df.sort_values(["_d", "_s", "_n", "rate", "seed"], kind="stable").drop(columns=["_d", "_n", "_s"])
    df = df.reset_index(drop=True)
    if args.csv:
        df.to_csv(args.csv, index=False)
    text = report(df, chosen, args, seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out} ({seconds / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
