"""glibc's allocator during a pass: the floor's forwards with and without
``tracin_core.engine.allocator.keep_freed_batches`` (``TRACIN_MALLOC_TUNING``).

    python benchmarks/allocator.py [--rows 60000] [--repeats 2]

Needs Debian's ``dataset-fashion-mnist``. Each run is its own process: decode the built-in
Fashion-MNIST workspace's training images and run the six checkpoints' no-grad forwards batch
by batch (``benchmarks/app_scale.py``'s floor), timed in process, with the process's system
time, minor page faults and peak RSS. Settings alternate (on, off, on, off, ...) so that both
see the same machine. The table goes to stdout and to ``benchmarks/results/allocator.md``.
Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RUN = """
import copy, json, resource, time, torch
from tracin_core import Workspace
from tracin_core.engine.allocator import keep_freed_batches
on = keep_freed_batches()
ws = Workspace.fashion(cache_dir={cache!r})
models = []
for state in ws._states:
    m = copy.deepcopy(ws.model)
    m.load_state_dict(state)
    models.append(m.eval())
n = min(len(ws.train), {rows})
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
with torch.no_grad():
    for s in range(0, n, 512):
        x, _ = ws.train.decode_batch(range(s, min(n, s + 512)))
        for m in models:
            m(x)
seconds = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"on": on, "seconds": seconds, "sys": r1.ru_stime - r0.ru_stime,
                  "faults": r1.ru_minflt - r0.ru_minflt, "peak_mb": r1.ru_maxrss / 1024}}))
"""


def run(tuned: bool, rows: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, PYTHONPATH=str(REPO), TRACIN_MALLOC_TUNING="1" if tuned else "0")
        out = subprocess.run([sys.executable, "-c", RUN.format(cache=cache, rows=rows)], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "allocator.md")
    args = ap.parse_args(argv)
    lines = ["| allocator | run | forwards (in process) | system time | minor page faults | peak RSS |",
             "|---|---|---|---|---|---|"]
    for i in range(args.repeats):
        for tuned in (True, False):
            r = run(tuned, args.rows)
            name = "tuned (mmap 32 MB, trim 512 MB)" if r["on"] else "glibc defaults (TRACIN_MALLOC_TUNING=0)"
            lines.append(f"| {name} | {i + 1} | {r['seconds']:.1f} s | {r['sys']:.1f} s | {r['faults']:,} | "
                         f"{r['peak_mb']:.0f} MB |")
            print(lines[-1], flush=True)
    cmd = "python benchmarks/allocator.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# glibc's allocator during the floor's forwards ({args.rows:,} Fashion-MNIST images, six checkpoints)\n\n"
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
            f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n"
            f"- command: `{cmd.strip()}`\n\n" + "\n".join(lines) + "\n")
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
