"""Command line: the same engine as the app.

    python -m tracin_core precompute WORKSPACE.toml [--methods fast cp] [--device cuda]
    torchrun --nproc-per-node N -m tracin_core precompute WORKSPACE.toml   # N processes share the pass
    python -m tracin_core self-influence WORKSPACE.toml --out FILE.csv [--method fast|cp]
    python -m tracin_core top-k WORKSPACE.toml --test-index 0 1 -k 10 [--opponents] --out FILE.csv
    python -m tracin_core mislabels WORKSPACE.toml --out FILE.csv [--method NAME]
    (every command that reads a workspace file: [--flagged exclude|keep], what to do with
    the items its [train] labels_override flags; default: the file's, else exclude)
    python -m tracin_core demo --rebuild
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd


def _workspace(args):
    from .audit.workspace import Workspace

    device = getattr(args, "device", None)
    if args.workspace == "demo":
        return Workspace.demo(cache_dir=args.cache_dir, device=device)
    if args.workspace == "fashion":
        return Workspace.fashion(cache_dir=args.cache_dir, device=device)
    return Workspace.from_toml(args.workspace, cache_dir=args.cache_dir, device=device,
                               flagged=getattr(args, "flagged", None))


def _write(df: pd.DataFrame, out: Optional[str]) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        if out.endswith(".json"):
            df.to_json(out, orient="records", indent=1)
        else:
            df.to_csv(out, index=False)
        print(f"wrote {len(df)} rows to {out}")
    else:
        print(df.to_string(index=False))


def _progress(desc: str):
    from tqdm.auto import tqdm

    bar = {"b": None}

    def cb(done: int, total: Optional[int]) -> None:
        if bar["b"] is None:
            bar["b"] = tqdm(total=total, desc=desc, unit="ex")
        bar["b"].update(done - bar["b"].n)

    return cb


def _precompute(args) -> int:
    """One pass per method; under torchrun every process computes its share of the batches."""
    from .engine import distributed

    args.device = distributed.init_from_env(args.device)
    try:
        with distributed.sharded():
            rank, world = distributed.rank_world()
            ws = _workspace(args)
            for m in args.methods:
                desc = f"{m}: training pass" + (f" (rank {rank} of {world})" if world > 1 else "")
                ws.precompute([m], progress=_progress(desc) if rank == 0 else None)
        if rank == 0 and not args.skip_ranking:
            # rankings kept beside the store: the Review page's default (the app then opens
            # at once), or every ranking the Evaluation page shows
            if args.all_rankings:
                print("every mislabel ranking…", file=sys.stderr)
                ws.mislabel_score_arrays(with_cp="cp" in args.methods)
            else:
                print("default mislabel ranking…", file=sys.stderr)
                ws.mislabel_scores()
                for search in ws.ranking_searches():
                    print(search.describe(), file=sys.stderr)
            ws.review_signals()  # what the Review page's live queue reads, kept too
            print(f"feature store ready under {ws.store_dir}" + (f" ({world} processes)" if world > 1 else ""))
    finally:
        distributed.shutdown()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracin_core", description="TracIn influence from the shell")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def ws_parser(name: str, help_: str):
        p = sub.add_parser(name, help=help_)
        p.add_argument("workspace", help="workspace .toml file ('demo' or 'fashion' for a built-in one)")
        p.add_argument("--cache-dir", default=None,
                       help="feature store folder (default $TRACIN_CACHE/stores, else ~/.cache/tracin_audit/stores: the app's)")
        p.add_argument("--flagged", default=None, choices=["exclude", "keep"],
                       help="items the training labels_override flags (excluded, ambiguous, outlier, duplicate): "
                            "exclude them or keep them with their given label (default: the workspace file's "
                            "[train] flagged, else exclude)")
        return p

    p = ws_parser("precompute", "one pass over the training data: build the feature store")
    p.add_argument("--skip-ranking", action="store_true",
                   help="only the pass: do not compute the default mislabel ranking afterwards")
    p.add_argument("--all-rankings", action="store_true",
                   help="after the pass, every mislabel ranking the Evaluation page shows (not only the default)")
    p.add_argument("--methods", nargs="+", default=["fast"], choices=["fast", "cp", "randproj", "index"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the model's; under torchrun "
                   "with CUDA, one GPU per process)")
    p = ws_parser("self-influence", "self-influence of every training example")
    p.add_argument("--method", default="fast", choices=["fast", "cp"])
    p.add_argument("--out", default=None)
    p = ws_parser("top-k", "proponents (or opponents) of test examples")
    p.add_argument("--test-index", type=int, nargs="+", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--opponents", action="store_true")
    p.add_argument("--method", default="fast", choices=["fast", "cp", "randproj", "index"])
    p.add_argument("--out", default=None)
    p = ws_parser("mislabels", "training examples ranked as likely mislabelled")
    p.add_argument("--method", default=None, help="ranking name (default: the Review page's)")
    p.add_argument("--out", default=None)
    d = sub.add_parser("demo", help="check or rebuild the built-in demo's assets")
    d.add_argument("rest", nargs=argparse.REMAINDER)

    args = parser.parse_args(argv)
    from .engine.allocator import keep_freed_batches

    # before any thread allocates: threads that already hold a malloc arena keep it, and the
    # passes' memory is then flat only as long as every thread shares one
    keep_freed_batches()
    if args.cmd == "demo":
        from .audit.demo import main as demo_main

        return demo_main(args.rest)
    try:
        if args.cmd == "precompute":
            return _precompute(args)
        ws = _workspace(args)
        if args.cmd == "self-influence":
            ws.precompute([args.method], progress=_progress("training pass"))
            si = ws.self_influence(args.method)
            df = pd.DataFrame({"index": range(len(si)), "label": ws.train.labels.numpy(), "self_influence": si})
            _write(df, args.out)
        elif args.cmd == "top-k":
            ws.precompute([args.method], progress=_progress("training pass"))
            rows = []
            for t in args.test_index:
                res = ws.influence(t, k=args.k, method=args.method)
                table = res.opponents if args.opponents else res.proponents
                rows.append(table.assign(test_index=t))
            _write(pd.concat(rows, ignore_index=True)[["test_index", "rank", "index", "score", "label", "predicted"]], args.out)
        elif args.cmd == "mislabels":
            ws.precompute(["fast"], progress=_progress("training pass"))
            _write(ws.mislabel_scores(args.method), args.out)
            for search in ws.ranking_searches(args.method):
                print(search.describe(), file=sys.stderr)
            # what the Review page's live queue reads for this ranking, kept beside it (the
            # neighbour searches are still in memory here; the page would search again)
            ws.review_signals(args.method)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
