"""Dataset vs DataLoader: time and score difference of the pass batching.

A ``Dataset`` with ``batch_size=B`` is read in batches of 512 (TracInCP: 128) by default;
``captum_batching=True`` reads it in batches of B, as Captum does, which makes the
scores bitwise those of a ``DataLoader(dataset, B)``. This prints, for a few B, the time
of construction + ``self_influence()`` + ``influence(test)`` for each of the three, and
the largest score difference against the DataLoader's.

    nice -n 10 python benchmarks/dataset_batching.py [--n 10000] [--batch-sizes 8,32,128]

Every run appends its table (with date, machine and command) to
``benchmarks/results/dataset_batching.md``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tracin_core import TracInCP, TracInCPFast  # noqa: E402
from tracin_core.audit.models import TutorialCifarNet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="training examples (TracInCP uses n/5)")
    ap.add_argument("--batch-sizes", default="8,32,128")
    ap.add_argument("--checkpoints", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.n, 3, 32, 32)
    y = torch.randint(0, 10, (args.n,))
    test = (x[:4] + 0.1, y[:4])
    folder = tempfile.mkdtemp()
    for c in range(args.checkpoints):
        torch.manual_seed(c)
        torch.save({"model_state_dict": TutorialCifarNet().state_dict(), "learning_rate": 0.01},
                   os.path.join(folder, f"checkpoint-{c}.pt"))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "dataset_batching.md")
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"`python benchmarks/dataset_batching.py {' '.join(sys.argv[1:])}`")
    say("")
    say(f"torch {torch.__version__}, threads {torch.get_num_threads()}, n={args.n}, "
        f"{args.checkpoints} checkpoints, TutorialCifarNet, float32")
    say("")
    say("| class | B | train data | time (s) | max abs diff of scores vs DataLoader(B) | max abs diff of self-influence |")
    say("|---|---|---|---|---|---|")
    for cls, n in ((TracInCPFast, args.n), (TracInCP, args.n // 5)):
        ds = TensorDataset(x[:n], y[:n])
        for b in (int(v) for v in args.batch_sizes.split(",")):
            results = {}
            for label, data, extra in (("DataLoader(B)", DataLoader(ds, b), {}),
                                       ("Dataset", ds, {}),
                                       ("Dataset, captum_batching", ds, {"captum_batching": True})):
                model = TutorialCifarNet()
                loss = torch.nn.CrossEntropyLoss(reduction="sum")
                t0 = time.perf_counter()
                if cls is TracInCPFast:
                    tr = cls(model, "fc3", data, folder, loss_fn=loss, batch_size=b, **extra)
                else:
                    tr = cls(model, data, folder, layers=["fc2", "fc3"], loss_fn=loss, batch_size=b, **extra)
                si = tr.self_influence()
                sc = tr.influence(test)
                results[label] = (time.perf_counter() - t0, sc, si)
            ref = results["DataLoader(B)"]
            for label, (t, sc, si) in results.items():
                say(f"| {cls.__name__} (n={n}) | {b} | {label} | {t:.2f} | "
                    f"{(sc - ref[1]).abs().max().item():.1e} | {(si - ref[2]).abs().max().item():.1e} |")
    with open(out, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
