"""How well does each mislabel ranker find wrong labels? (issue #5)

For every setting — dataset x noise model x noise rate — and every seed:

1. train a model on the clean training labels (the tutorial noise model needs it);
2. mislabel a seeded random 10% or 20% of the training items with a noise model
   (:func:`tracin_core.demo.noisy_labels`):
   ``tutorial`` (Captum's tutorial and the demo: the clean model's most probable *wrong*
   class), ``uniform`` (a random other class), ``pair`` (class ``y`` -> ``y + 1 mod K``);
3. train a fresh model on the noisy labels, keeping 6 checkpoints evenly spread over
   training (the demo's recipe);
4. build :class:`tracin_core.rankers.RankerInputs` with ``TracInCPFast`` (last layer:
   per-checkpoint logits, final-layer inputs, self-influence terms) and ``TracInCP`` (all
   layers: self-influence terms) over the in-memory checkpoints — one pass each, exactly
   what a Workspace's feature store holds;
5. score every ranker in :data:`tracin_core.rankers.RANKERS`: ROC AUC (mislabelled vs
   clean) and the share of the mislabels found in the first 10% / 20% of the queue.

Datasets (all bundled with scikit-learn, nothing is downloaded):
``digits`` — the demo: its fixed 80/20 split (1437 training images), ``DigitsCNN``, the
demo's recipe (clean model 15 epochs with seed ``s``; noisy model 30 epochs, seed
``s + 1``, SGD lr 0.05 momentum 0.9 batch 64, checkpoints after epochs 5, 10, ..., 30).
With seed 0 and 10% tutorial noise this is exactly the shipped demo.
``wine`` (3 classes, 142 training rows) and ``breast_cancer`` (2 classes, 455 training
rows) — stratified 80/20 split (``random_state=0``), standardised features, an MLP
``fc1 -> ReLU -> fc2`` (64 hidden units), SGD lr 0.01 momentum 0.9 batch 16, clean model
60 epochs, noisy model 120 epochs with checkpoints every 20. With two classes the three
noise models give the same labels, so ``breast_cancer`` runs ``uniform`` only (a flip).

Prints mean ± std over seeds and writes ``benchmarks/results/mislabel_quality.md``.
Budget: a few minutes on 2 CPU cores (``--jobs 2``); ``--quick`` is a 1-seed smoke run.

    python benchmarks/mislabel_quality.py                  # full run, 5 seeds, 1 process
    python benchmarks/mislabel_quality.py --jobs 2         # same, 2 worker processes
    python benchmarks/mislabel_quality.py --quick --out /tmp/mq.md
    python benchmarks/mislabel_quality.py --jobs 2 --seed-start 5 --seeds 10 --out /tmp/dev.md --dump /tmp/dev
"""
from __future__ import annotations

import argparse
import dataclasses
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
DATASETS = ("digits", "wine", "breast_cancer")
NOISES = ("tutorial", "uniform", "pair")
RATES = (0.1, 0.2)
N_CHECKPOINTS = 6
NO_FEATURES = " (no features)"
TAB_RECIPE = dict(hidden=64, lr=0.01, momentum=0.9, batch_size=16, clean_epochs=60, epochs=120)


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


def load_data(name: str) -> dict[str, Any]:
    """``x, y, x_test, y_test`` tensors, class count and model factory for a dataset."""
    if name == "digits":
        from tracin_core.datasets import load_dataset
        from tracin_core.models import DigitsCNN

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
                           quick: bool) -> tuple[nn.Module, list[dict[str, torch.Tensor]], float]:
    """Train (clean: the clean model, seed ``seed``; else the noisy model, seed ``seed + 1``)."""
    from tracin_core import demo

    states: list[dict[str, torch.Tensor]] = []
    if name == "digits":
        epochs = demo.CLEAN_EPOCHS if clean else demo.DEFAULT_EPOCHS
        lr = demo.LEARNING_RATE
    else:
        epochs = TAB_RECIPE["clean_epochs"] if clean else TAB_RECIPE["epochs"]
        lr = TAB_RECIPE["lr"]
    if quick:
        epochs = max(N_CHECKPOINTS, epochs // 3)
    keep = set(checkpoint_epochs(epochs))

    def save(epoch: int, model: nn.Module) -> None:
        if not clean and epoch in keep:
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    run_seed = seed if clean else seed + 1
    if name == "digits":
        model = demo.train_digits_cnn(data["x"], y, epochs=epochs, seed=run_seed, on_epoch_end=save)
    else:
        model = train_model(data["factory"], data["x"], y, epochs=epochs, seed=run_seed, lr=lr,
                            momentum=TAB_RECIPE["momentum"], batch_size=TAB_RECIPE["batch_size"],
                            on_epoch_end=save)
    return model, states, lr


def ranker_inputs(data: dict[str, Any], y_noisy: torch.Tensor, states: list[dict[str, torch.Tensor]],
                  lr: float):
    """RankerInputs from TracInCPFast / TracInCP stores over in-memory checkpoints."""
    from torch.utils.data import TensorDataset

    from tracin_core.rankers import RankerInputs
    from tracin_core.tracin import TracInCP, TracInCPFast

    ds = TensorDataset(data["x"], y_noisy)

    def load(model: nn.Module, state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        return lr

    common = dict(checkpoints_load_func=load, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=256)
    fast = TracInCPFast(data["factory"](), "fc2", ds, states, store_outputs=True, **common)
    store = fast._train_store()
    cp = TracInCP(data["factory"](), ds, states, **common)
    cstore = cp._train_store()
    C = len(states)
    arr = lambda st, name: st.array(name).double().numpy()  # noqa: E731
    return RankerInputs(
        logits=np.stack([arr(store, f"c{c}/o") for c in range(C)]),
        labels=y_noisy.numpy().copy(),
        weights=np.asarray(fast.learning_rates, dtype=np.float64),
        si_fast=np.stack([arr(store, f"c{c}/self")[:, 0] for c in range(C)]),
        si_cp=np.stack([arr(cstore, f"c{c}/self")[:, 0] for c in range(C)]),
        features=np.stack([arr(store, f"c{c}/a") for c in range(C)]),
    )


# ----------------------------------------------------------------------------- one task
def settings_for(name: str, noises: tuple[str, ...], rates: tuple[float, ...]) -> list[tuple[str, float]]:
    ns = [n for n in noises if n == "uniform"] if name == "breast_cancer" else list(noises)
    return [(n, r) for n in ns for r in rates]


def run_task(args: tuple[str, int, tuple[str, ...], tuple[float, ...], bool, Optional[str]]) -> list[dict[str, Any]]:
    """One dataset and seed: every noise model and rate. Returns one row per (setting, ranker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_task(*args)
    finally:
        torch.set_num_threads(threads)


def _run_task(name: str, seed: int, noises: tuple[str, ...], rates: tuple[float, ...], quick: bool,
              dump: Optional[str]) -> list[dict[str, Any]]:
    from sklearn.metrics import roc_auc_score

    from tracin_core import demo
    from tracin_core import rankers as rk

    data = load_data(name)
    t0 = time.perf_counter()
    clean, _, _ = train_with_checkpoints(name, data, data["y"], seed, clean=True, quick=quick)
    with torch.no_grad():
        clean_logits = clean(data["x"])
    clean_acc = demo.evaluate(clean, data["x_test"], data["y_test"])
    rows: list[dict[str, Any]] = []
    for noise, rate in settings_for(name, noises, rates):
        t1 = time.perf_counter()
        y_noisy_np, _ = demo.noisy_labels(data["y"], rate, noise, seed=seed, num_classes=data["num_classes"],
                                          clean_logits=clean_logits)
        y_noisy = torch.from_numpy(y_noisy_np)
        truth = y_noisy_np != data["y"].numpy()
        model, states, lr = train_with_checkpoints(name, data, y_noisy, seed, clean=False, quick=quick)
        acc = demo.evaluate(model, data["x_test"], data["y_test"])
        t2 = time.perf_counter()
        inp = ranker_inputs(data, y_noisy, states, lr)
        t3 = time.perf_counter()
        if dump:
            Path(dump).mkdir(parents=True, exist_ok=True)
            np.savez(Path(dump) / f"{name}_{noise}_{rate}_{seed}.npz", logits=inp.logits, labels=inp.labels,
                     weights=inp.weights, si_fast=inp.si_fast, si_cp=inp.si_cp, features=inp.features,
                     truth=data["y"].numpy())
        # every ranker; the neighbourhood ones also without features (their logits fallback)
        no_features = dataclasses.replace(inp, features=None)
        runs = [(r, r, inp) for r in rk.available(True, True)]
        runs += [(f"{r}{NO_FEATURES}", r, no_features) for r in rk.RANKERS if r in rk.USES_FEATURES]
        for ranker, name_in_registry, inputs in runs:
            t4 = time.perf_counter()
            scores = rk.compute(name_in_registry, inputs)
            ms = (time.perf_counter() - t4) * 1000
            rows.append(dict(dataset=name, noise=noise, rate=rate, seed=seed, ranker=ranker,
                             auc=float(roc_auc_score(truth, scores)),
                             f10=rk.found_at(scores, truth, 0.10), f20=rk.found_at(scores, truth, 0.20),
                             ms=ms, n=len(truth), n_mislabelled=int(truth.sum()), test_acc=acc,
                             clean_acc=clean_acc, train_s=t2 - t1, store_s=t3 - t2))
    print(f"  {name} seed {seed}: {len(rows)} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- report
def pm(values: Any, pct: bool = False, digits: int = 3) -> str:
    v = np.asarray(values, dtype=np.float64)
    if pct:
        return f"{100 * v.mean():.1f} ± {100 * v.std():.1f}%"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def report(df, args: argparse.Namespace, seconds: float) -> str:
    from tracin_core import rankers as rk

    default = rk.DEFAULT_RANKER
    lines = [
        "# Mislabel rankers: how many wrong labels each finds, and how early",
        "",
        f"Command: `{args.command}`  ",
        f"Date: {datetime.now():%Y-%m-%d %H:%M}; machine: {platform.machine()}, {os.cpu_count()} logical CPUs; "
        f"torch {torch.__version__} (1 thread per worker, {args.jobs} worker(s)); wall time {seconds / 60:.1f} min.  ",
        f"Seeds: {', '.join(map(str, sorted(df.seed.unique())))} (mean ± std over seeds). "
        "AUC: ROC AUC of the score for mislabelled vs clean; found@10% / found@20%: share of the "
        "mislabels among the first 10% / 20% of the queue (with a 10% noise rate, 100% found@10% "
        "means a perfect queue).  ",
        f"Default ranking (`DEFAULT_RANKER`): **{default}** — {rk.RANKERS[default][1]}.  ",
        "Recipe and noise models: see the docstring of `benchmarks/mislabel_quality.py`. "
        "`digits / tutorial / 10%` with seed 0 is exactly the shipped demo.",
        "",
        "## Summary: the default vs the best single ranker and plain TracInCPFast self-influence",
        "",
        "Best single ranker: the best of the rankers that are not combinations "
        f"({', '.join(sorted(rk.COMBINATIONS))} are). Rankers marked `{NO_FEATURES.strip()}` are the "
        "neighbourhood rankers computed without `RankerInputs.features` (neighbours among the logits), their "
        "fallback when a store holds no final-layer inputs; they are shown for reference, not compared.",
        "",
        "| setting | n (mislabelled) | test acc. noisy / clean model | default AUC | default found@10% | "
        "best single ranker (AUC) | self_influence_fast AUC | default ≥ best single − 0.005 | default > SI fast |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups = list(df.groupby(["dataset", "noise", "rate"], sort=False))
    checks = []
    for (ds, noise, rate), g in groups:
        means = g.groupby("ranker")[["auc", "f10", "f20"]].mean()
        d = g[g.ranker == default]
        singles = means.drop(index=[r for r in means.index
                                    if r in rk.COMBINATIONS or r == default or r.endswith(NO_FEATURES)])
        best = singles.auc.idxmax()
        ok_best = means.auc[default] >= singles.auc.max() - 0.005
        ok_si = means.auc[default] > means.auc["self_influence_fast"]
        checks.append((ds, noise, rate, ok_best, ok_si, means.auc[default], means.f10[default]))
        lines.append(
            f"| {ds} / {noise} / {int(rate * 100)}% | {int(g.n.iloc[0])} ({int(g.n_mislabelled.iloc[0])}) | "
            f"{g.test_acc.mean():.3f} / {g.clean_acc.mean():.3f} | {pm(d.auc, digits=4)} | {pm(d.f10, pct=True)} | "
            f"{best} ({means.auc[best]:.4f}) | {means.auc['self_influence_fast']:.4f} | "
            f"{'yes' if ok_best else '**no**'} | {'yes' if ok_si else '**no**'} |")
    demo_row = [c for c in checks if c[:3] == ("digits", "tutorial", 0.1)]
    lines += ["", "## Targets (issue #5)", ""]
    if demo_row:
        _, _, _, _, _, auc, f10 = demo_row[0]
        lines.append(f"- demo setting (digits, 10% tutorial noise): default found@10% = {100 * f10:.1f}% "
                     f"(target ≥ 95%: {'met' if f10 >= 0.95 else '**not met**'}), AUC = {auc:.4f} "
                     f"(target ≥ 0.995: {'met' if auc >= 0.995 else '**not met**'}).")
    others = [c for c in checks if c[:3] != ("digits", "tutorial", 0.1)]
    nb = [f"{c[0]}/{c[1]}/{int(c[2] * 100)}%" for c in others if not c[3]]
    ns = [f"{c[0]}/{c[1]}/{int(c[2] * 100)}%" for c in others if not c[4]]
    lines.append(f"- every other setting, default AUC ≥ best single ranker − 0.005: "
                 f"{'met' if not nb else '**not met** in ' + ', '.join(nb)}.")
    lines.append(f"- every other setting, default AUC > self_influence_fast: "
                 f"{'met' if not ns else '**not met** in ' + ', '.join(ns)}.")
    mean_auc = df.groupby("ranker").auc.mean().sort_values(ascending=False)
    mean_f10 = df.groupby("ranker").f10.mean()
    lines += ["", "## Overall (mean over every setting and seed)", "",
              "| ranker | mean AUC | mean found@10% | mean found@20% | worst setting's mean AUC | ms per call (digits) |",
              "|---|---|---|---|---|---|"]
    worst = df.groupby(["dataset", "noise", "rate", "ranker"]).auc.mean().groupby("ranker").min()
    ms = df[df.dataset == "digits"].groupby("ranker").ms.median() if (df.dataset == "digits").any() \
        else df.groupby("ranker").ms.median()
    for r in mean_auc.index:
        mark = " (default)" if r == default else ""
        lines.append(f"| {r}{mark} | {mean_auc[r]:.4f} | {100 * mean_f10[r]:.1f}% | "
                     f"{100 * df[df.ranker == r].f20.mean():.1f}% | {worst[r]:.4f} | {ms.get(r, float('nan')):.1f} |")
    lines += ["", "## Every setting", ""]
    for (ds, noise, rate), g in groups:
        lines += [f"### {ds} / {noise} / {int(rate * 100)}% "
                  f"({int(g.n.iloc[0])} training items, {int(g.n_mislabelled.iloc[0])} mislabelled; "
                  f"noisy model's test accuracy {pm(g.drop_duplicates('seed').test_acc)})", "",
                  "| ranker | ROC AUC | found@10% | found@20% |", "|---|---|---|---|"]
        order = g.groupby("ranker").auc.mean().sort_values(ascending=False).index
        for r in order:
            h = g[g.ranker == r]
            mark = " **(default)**" if r == default else ""
            lines.append(f"| {r}{mark} | {pm(h.auc, digits=4)} | {pm(h.f10, pct=True)} | {pm(h.f20, pct=True)} |")
        lines.append("")
    lines += ["## Rankers", ""] + [f"- `{n}`: {desc}" for n, (_, desc) in rk.RANKERS.items()]
    lines += [f"- `<name>{NO_FEATURES}`: the same ranker with `RankerInputs.features=None` (logits as embeddings)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--noise", nargs="+", default=list(NOISES), choices=NOISES)
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    p.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    p.add_argument("--seed-start", type=int, default=0,
                   help="first seed (default 0): seeds S..S+N-1; e.g. --seed-start 5 --seeds 10 for held-out seeds")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--quick", action="store_true", help="1 seed, a third of the epochs: a smoke run")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown report (default {DEFAULT_OUT})")
    p.add_argument("--csv", type=Path, default=None, help="also write every (setting, seed, ranker) row")
    p.add_argument("--dump", type=str, default=None, help="save every RankerInputs as .npz in this folder")
    args = p.parse_args(argv)
    args.command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:]))
    seeds = [args.seed_start] if args.quick else list(range(args.seed_start, args.seed_start + args.seeds))
    tasks = [(d, s, tuple(args.noise), tuple(args.rates), args.quick, args.dump)
             for d in args.datasets for s in seeds]
    # slow tasks (digits) first so the pool stays busy
    tasks.sort(key=lambda t: t[0] != "digits")
    t0 = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(run_task, tasks))
    else:
        results = [run_task(t) for t in tasks]
    seconds = time.perf_counter() - t0
    import pandas as pd

    df = pd.DataFrame([r for rows in results for r in rows])
    df["_d"] = df.dataset.map({d: i for i, d in enumerate(DATASETS)})
    df["_n"] = df.noise.map({n: i for i, n in enumerate(NOISES)})
    df = df.sort_values(["_d", "_n", "rate", "seed"], kind="stable").drop(columns=["_d", "_n"]).reset_index(drop=True)
    text = report(df, args, seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(text)
    print(f"wrote {args.out} ({seconds / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
