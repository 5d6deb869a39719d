"""The default ranking's neighbour search above 20,000 rows: the HNSW graph it uses
(``tracin_core.audit.rankers``, faiss) against the annoy index it replaced, on the final-layer
inputs of the built-in Fashion-MNIST workspace (60,000 rows) and, with ``--million``, of the
1,000,000-row set of ``benchmarks/make_million.py`` (its store must exist: run
``benchmarks/app_scale.py`` first).

    python benchmarks/neighbour_search.py [--million] [--checkpoints all|last]

Both methods run as the ranking runs them: rows in :func:`rankers.locality_order`, the
search's width (HNSW ``efSearch``; annoy ``search_k``, 4 trees) calibrated on 1,000 rows to a
recall of 0.96, then every row queried in that order. Both on one thread, timed in CPU
seconds of this process (build, calibration, queries; the exact search of the calibration
sample is done once beforehand and not counted), side by side in one run; recall against
exact search on 1,000 other random rows. The annoy half is this script's copy of the code
the ranking used before (commit 5ee406e), kept here only to compare. Timings are printed and
written to ``benchmarks/results/neighbour_search.md``, never asserted.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ANNOY_TREES = 4


def annoy_search(x: np.ndarray, k: int, cal_rows: np.ndarray, cal_sims: np.ndarray) -> tuple[np.ndarray, int]:
    """The replaced search: annoy (4 trees) on the locality order, search_k calibrated from
    20·(k+1) up by a quarter until the calibration recall reaches 0.96, every row queried."""
    import annoy

    from tracin_core.audit import rankers as rk

    order = rk.locality_order(x)
    xo = np.ascontiguousarray(x[order])
    index = annoy.AnnoyIndex(x.shape[1], "angular")
    index.set_seed(0)
    for i in range(len(xo)):
        index.add_item(i, xo[i])
    index.build(ANNOY_TREES, n_jobs=1)
    at = np.empty(len(x), dtype=np.int64)
    at[order] = np.arange(len(x))

    def rows_of(items: np.ndarray, search_k: int) -> np.ndarray:
        out = np.empty((len(items), k), dtype=np.int64)
        for r, i in enumerate(items.tolist()):
            got = [j for j in index.get_nns_by_item(i, k + 1, search_k=search_k) if j != i][:k]
            out[r] = (got + [i] * k)[:k]  # (a short answer is padded; counts as a miss)
        return out

    search_k = 20 * (k + 1)
    while search_k < 3200 * (k + 1):
        found = order[rows_of(at[cal_rows], search_k)]
        if rk._recall_rows(x, cal_rows, found, cal_sims) >= rk.TARGET_RECALL + rk.CALIBRATION_MARGIN:
            break
        search_k = max(search_k + 1, search_k * 5 // 4)
    found = np.empty((len(x), k), dtype=np.int64)
    found[order] = order[rows_of(np.arange(len(x)), search_k)]
    return found, search_k


def hnsw_search(x: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """The ranking's search (calibration sample memoised beforehand, as in the ranking)."""
    from tracin_core.audit import rankers as rk

    index, width, order, xo = rk._calibrated_index(x, k)
    found = np.empty((len(x), k), dtype=np.int64)
    found[order] = order[rk._hnsw_rows(index, xo, np.arange(len(x)), k, width)]
    return found, width


def measure(name: str, emb: np.ndarray, k: int = 10) -> list[dict]:
    from tracin_core.audit import rankers as rk

    x = rk._unit_rows(emb)
    cal_rows = rk._sample_rows(len(x), rk.CALIBRATION_SAMPLE, seed=1)
    cal_sims = rk._exact_sample(x, cal_rows, k)[1]  # the ranking memoises it too: not timed
    check = rk._sample_rows(len(x), rk.RECALL_SAMPLE, seed=0)
    check_sims = rk._exact_sample(x, check, k)[1]
    out = []
    for method, run in (("annoy (4 trees), replaced", lambda: annoy_search(x, k, cal_rows, cal_sims)),
                        (f"HNSW ({rk.HNSW_LINKS} links), the ranking's", lambda: hnsw_search(x, k))):
        t = time.process_time()
        found, width = run()
        cpu = time.process_time() - t
        recall = rk._recall_rows(x, check, found[check], check_sims)
        out.append({"set": name, "method": method, "width": width, "cpu_s": cpu, "recall": recall})
        print(f"{name}: {method}: width {width}, {cpu:.2f} CPU-s, recall {recall:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--million", action="store_true", help="also the 1,000,000-row set (its store must exist)")
    ap.add_argument("--checkpoints", choices=("all", "last"), default="all",
                    help="the ranking's three spread checkpoints, or only the last one (1M: about 3 minutes each)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "neighbour_search.md")
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from tracin_core import Workspace
    from tracin_core.audit import rankers as rk
    from tracin_core.audit.settings import store_cache_dir

    sets = [("60,000 Fashion-MNIST", Workspace.fashion(cache_dir=store_cache_dir()))]
    if args.million:
        toml = REPO / "benchmarks" / "_work" / "million" / "workspace.toml"
        sets.append(("1,000,000 shifted Fashion-MNIST", Workspace.from_toml(toml, cache_dir=store_cache_dir())))
    rows = []
    for name, ws in sets:
        store = ws._engine("fast").train_store()
        if not store.complete:
            raise SystemExit(f"{name}: the feature store is not computed yet; run `python -m tracin_core precompute` "
                             "for it first (or benchmarks/app_scale.py)")
        cs = rk.spread_checkpoints(len(ws.checkpoints))
        for c in cs if args.checkpoints == "all" else cs[-1:]:
            rows += measure(f"{name}, checkpoint {c}", store.layer_inputs(c).float().numpy())
    lines = ["# The default ranking's neighbour search: HNSW against the annoy index it replaced", "",
             f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
             f"- command: `python benchmarks/neighbour_search.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "- one thread; CPU seconds of build, calibration and every row's query (k = 10); recall "
             "against exact search on 1,000 random rows", "",
             "| rows, checkpoint | method | width (efSearch / search_k) | CPU time | recall |", "|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['method']} | {r['width']} | {r['cpu_s']:.2f} s | {r['recall']:.3f} |" for r in rows]
    pairs = [(a, b) for a, b in zip(rows[::2], rows[1::2])]
    lines += ["", *[f"- {a['set']}: HNSW takes {b['cpu_s'] / a['cpu_s']:.2f}x annoy's CPU time" for a, b in pairs]]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
