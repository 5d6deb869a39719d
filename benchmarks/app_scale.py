"""The built-in Fashion-MNIST workspace (60,000 training images) and a 1,000,000-image set, from the shell and in the app.

    python benchmarks/app_scale.py [--keys 20] [--picks 5] [--million 1000000]

Needs Debian's ``dataset-fashion-mnist``. In a fresh cache folder, each step in its own
process (wall time, and its exact peak RSS through a launcher process: :func:`_spawn`):

* floor: decode the 60,000 images and run the six checkpoints' no-grad forwards, batch by
  batch (what any one-pass method must do at least);
* ``precompute fashion --skip-ranking``: the training pass (twice more into stores of their
  own, for its peak: the highest of the three);
* ``mislabels fashion``: the default ranking (the process opens the workspace too);
* ``precompute fashion --all-rankings``: every other ranking the Evaluation page shows,
  kept beside the store (the pass is already done);

then ``streamlit run app.py`` on that cache and headless Chromium (Debian's
``/usr/bin/chromium``): the first visit to Review after precompute, key press -> next item,
Influence's pick -> both galleries, and the first load of Evaluation.

Then the large half (``--million N`` rows, default 1,000,000; 0 skips it), on a set made by
``benchmarks/make_million.py`` (shifted Fashion-MNIST images, the ``npy`` kind, kept in
``benchmarks/_work/million`` and reused): ``precompute`` killed with SIGKILL at 30% of its
batches and run again to the end (peak RSS of both, against the 60k run's), the default
ranking (HNSW neighbour search; its recall against exact search on 1,000 sampled rows is
printed), exact top-10 for 4 test images in process, and Review in the app (the workspace
listed in a server config).

The tables go to stdout and, with the date, the machine and the command, to
``benchmarks/results/app_scale.md`` (and ``.json``). Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.app_latency import GALLERIES_SHOWN, wait_idle  # noqa: E402
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402

FLOOR = """
import copy, json, time, torch
from tracin_core import Workspace
from tracin_core.engine.allocator import keep_freed_batches
keep_freed_batches()  # what precompute's pass does too: the floor gets the same allocator
ws = Workspace.fashion(cache_dir={cache!r})
models = []  # one model per checkpoint, each loaded once: nothing but decoding and forwards below
for state in ws._states:
    m = copy.deepcopy(ws.model)
    m.load_state_dict(state)
    models.append(m.eval())
t = time.perf_counter()
with torch.no_grad():
    for s in range(0, len(ws.train), 512):
        x, _ = ws.train.decode_batch(range(s, min(len(ws.train), s + 512)))
        for m in models:
            m(x)
print(json.dumps({{"seconds": time.perf_counter() - t}}))
"""


#: runs the measured command as its child and writes that child's ``ru_maxrss`` (KiB) to
#: ``argv[1]``; SIGTERM to it becomes SIGKILL to the child (see :func:`_spawn`)
_LAUNCHER = """import os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.kill())
while True:
    try:
        _, status, usage = os.wait4(child.pid, 0)
        break
    except InterruptedError:
        continue
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def _spawn(cmd: list[str], **popen: Any) -> tuple[subprocess.Popen, Path]:
    """Start ``cmd`` through a small launcher process; returns (the launcher, the file its
    child's peak RSS will be written to). Why not ``ru_maxrss`` of our own child: Linux
    carries the exec-ing process's high-water RSS into the new program's ``ru_maxrss``
    (``signal->maxrss`` survives exec; a vfork'd child reports its parent's mm), so every
    command started from this process reported at least this process's own peak (1572 MB
    for both million-row precompute runs in one run, whose true peaks were about 900 MB).
    The launcher is a fresh interpreter (a few MB), so its child's figure is the command's own."""
    fd, peak_file = tempfile.mkstemp(prefix="peak_", suffix=".txt")
    os.close(fd)
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, peak_file, *cmd], **popen)
    return proc, Path(peak_file)


def _wait_peak(proc: subprocess.Popen, peak_file: Path) -> float:
    """Wait for the launcher ``proc`` (:func:`_spawn`) to end; its command's exact peak RSS
    in bytes (the kernel's high-water mark, ``ru_maxrss`` from ``os.wait4``). Sampling RSS
    every 50 ms, as this script did, missed short peaks: the 60k precompute's measured peak
    ranged 763-942 MB across runs, and with it the million-row run's memory ratio (0.99x to
    1.15x)."""
    proc.wait()
    try:
        return float(peak_file.read_text()) * 1024.0
    finally:
        peak_file.unlink(missing_ok=True)


def run_step(cmd: list[str], env: dict[str, str], stderr: list[str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one process (:func:`_wait_peak`); its stderr
    lines are appended to ``stderr`` when given. Output goes to temporary files, not pipes:
    a full pipe (a million-row progress bar) would stall the process being timed."""
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t = time.perf_counter()
        proc, peak_file = _spawn(cmd, cwd=REPO, env=env, stdout=out_f, stderr=err_f, text=True)
        peak = _wait_peak(proc, peak_file)
        seconds = time.perf_counter() - t
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if stderr is not None:
        stderr.extend(err.splitlines())
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, peak / 2**20, out


#: a review key press whose next item has not shown after this long counts as lost
KEY_TIMEOUT_MS = 60_000
#: the Evaluation page is shown: its two plotly charts (the ROC and found curves; precision in
#: the top k and the histogram) are each drawn (plotly has put its SVG in them)
EVALUATION_DRAWN = ("() => { const c = [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')];"
                    " return c.length >= 2 && c.every(e => e.querySelector('.main-svg')); }")


def app_steps(cache: Path, keys: int, picks: int, workspace: str = "fashion", config: Path | None = None,
              review_only: bool = False) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    out: dict = {}
    server = AppServer(cache, cache / "streamlit.log", config=config)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(300_000)
            cap = ".st-key-rv_item_panel [data-testid='stImageCaption']"
            t = time.perf_counter()
            pg.goto(server.url + f"/review?workspace={workspace}&reviewer=bench")
            pg.locator(cap).first.wait_for()
            out["review_first_visit_s"] = time.perf_counter() - t
            wait_idle(pg)
            lat, lost = [], 0
            for _ in range(keys):
                before = pg.locator(cap).first.inner_text().strip()
                pg.locator("h1").first.click()
                t = time.perf_counter()
                pg.keyboard.press("a")
                try:
                    pg.wait_for_function(
                        "(b) => { const c = document.querySelector(\".st-key-rv_item_panel [data-testid='stImageCaption']\");"
                        " return c && c.innerText.trim() !== b; }", arg=before, polling=20, timeout=KEY_TIMEOUT_MS)
                except PlaywrightTimeout:  # reported as a lost key press (a screenshot is kept), not timed
                    lost += 1
                    pg.screenshot(path=str(cache / f"lost-key-{lost}.png"), full_page=True)
                    continue
                lat.append(time.perf_counter() - t)
                wait_idle(pg)
            out["review_key_s"], out["review_keys_lost"] = lat, lost
            if review_only:
                browser.close()
                return out
            t = time.perf_counter()
            pg.goto(server.url + "/influence?workspace=fashion")
            pg.locator(".st-key-pick_0 button").wait_for()
            wait_idle(pg)
            out["influence_first_load_s"] = time.perf_counter() - t
            times = []
            for idx in (3, 17, 25, 8, 36, 12, 29, 1, 33, 20)[:picks + 1]:
                button = pg.locator(f".st-key-pick_{idx} button")
                button.scroll_into_view_if_needed()
                t = time.perf_counter()
                button.click()
                pg.wait_for_function(GALLERIES_SHOWN, arg=[idx, 8], polling=20)
                times.append(time.perf_counter() - t)
                wait_idle(pg)
            out["pick_cold_s"], out["pick_warm_s"] = times[0], times[1:]
            t = time.perf_counter()
            pg.goto(server.url + "/evaluation?workspace=fashion")
            pg.wait_for_function(EVALUATION_DRAWN, polling=50)
            wait_idle(pg)
            out["evaluation_first_load_s"] = time.perf_counter() - t
            browser.close()
    finally:
        server.stop()
    return out


TOPK = """
import json, time, torch
from tracin_core import Workspace
ws = Workspace.from_toml({toml!r}, cache_dir={stores!r})
eng = ws._engine("fast")
def four(s):  # 4 test images (each query its own: nothing memoised is reused)
    return (torch.stack([ws.test[i][0] for i in range(s, s + 4)]),
            torch.tensor([int(ws.test[i][1]) for i in range(s, s + 4)]))
first = time.perf_counter()
eng.influence(four(0), k=10)  # the store's pages come in once
first = time.perf_counter() - first
times = []
for s in (4, 8, 12):
    batch = four(s)
    t = time.perf_counter()
    res = eng.influence(batch, k=10)
    times.append(time.perf_counter() - t)
out = {{"first_s": first, "warm_s": sorted(times)[1]}}
from tracin_core.engine.influence_index import InfluenceIndex
t = time.perf_counter()
index = InfluenceIndex(eng).build()
out["index_build_s"] = time.perf_counter() - t
index.top_k(four(0), 10)  # the index's pages come in once
times, hits = [], []
for s in (4, 8, 12):
    batch = four(s)
    t = time.perf_counter()
    got = index.top_k(batch, 10)
    times.append(time.perf_counter() - t)
    want = eng.influence(batch, k=10)
    hits += [len(set(g.tolist()) & set(w.tolist())) / 10 for g, w in zip(got.indices, want.indices)]
out["index_warm_s"], out["index_recall"] = sorted(times)[1], sum(hits) / len(hits)
print(json.dumps(out))
"""


def _manifest_done(stores: Path) -> tuple[int, int]:
    """(batches done, batches in all) of the training pass being written under ``stores``."""
    for path in stores.glob("*/fast-*/manifest.json"):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        n, batch = info.get("n") or 0, info.get("meta", {}).get("batch_size") or 1
        return len(info.get("done", [])), -(-n // batch)
    return 0, 1


def killed_and_resumed(cmd: list[str], env: dict[str, str], stores: Path, at: float) -> dict:
    """Run ``cmd`` (a precompute), SIGKILL it once its store holds ``at`` of the batches,
    then run it again to the end: times, peak RSS of both, batches done at the kill."""
    import signal

    t = time.perf_counter()
    proc, peak_file = _spawn(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        done, total = _manifest_done(stores)
        if done >= at * total:
            proc.send_signal(signal.SIGTERM)  # the launcher kills the precompute with SIGKILL
            peak = _wait_peak(proc, peak_file)
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"{' '.join(cmd)} ended before it could be killed ({proc.returncode})")
    out = {"killed_after_s": time.perf_counter() - t, "killed_peak_mb": peak / 2**20,
           "killed_at_batches": done, "batches": total}
    out["resume_s"], out["resume_peak_mb"], _ = run_step(cmd, env)
    done, total = _manifest_done(stores)
    if done != total:
        raise SystemExit(f"the resumed pass left {total - done} batches undone")
    return out


def million_steps(n: int, keys: int, data_dir: Path) -> dict:
    """The 1M half: make the set, precompute killed once and resumed, the default ranking
    (HNSW neighbour search, its sampled recall), exact top-10 for 4 test images, Review."""
    from benchmarks.make_million import make
    from tests.conftest import write_server_config

    t = time.perf_counter()
    toml = make(data_dir, n=n)
    r: dict = {"n": n, "make_s": time.perf_counter() - t}
    cache = Path(tempfile.mkdtemp(prefix="tracin_scale_1m_"))
    env = dict(os.environ, TRACIN_CACHE=str(cache), PYTHONPATH=str(REPO))
    precompute = [sys.executable, "-m", "tracin_core", "precompute", str(toml), "--skip-ranking"]
    r.update(killed_and_resumed(precompute, env, cache / "stores", at=0.3))
    err: list[str] = []
    r["ranking_s"], r["ranking_peak_mb"], _ = run_step(
        [sys.executable, "-m", "tracin_core", "mislabels", str(toml), "--out", str(cache / "q.csv")], env, err)
    r["ranking_searches"] = [line for line in err if "neighbour search" in line]
    _, _, text = run_step([sys.executable, "-c", TOPK.format(toml=str(toml), stores=str(cache / "stores"))], env)
    r.update({f"topk_{k}": v for k, v in json.loads(text.strip().splitlines()[-1]).items()})
    config = write_server_config(cache / "tracin_audit.toml", workspaces={"million": str(toml)})
    r.update(app_steps(cache, keys, 0, workspace="million", config=config, review_only=True))
    return r


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * (len(values) - 1))))]


def rows_60k(r: dict) -> list[tuple[str, str, str, str]]:
    keys = r["review_key_s"]
    return [
        ("floor: decode 60,000 + six no-grad forwards (in-process time)", f"{r['floor_s']:.2f} s", "", ""),
        ("floor process (imports, data, model included)", f"{r['floor_process_s']:.2f} s",
         f"{r['floor_peak_mb']:.0f} MB", ""),
        ("`precompute fashion --skip-ranking` (whole process; peak: the highest of "
         + (" / ".join(f"{p:.0f}" for p in r["precompute_peaks_mb"]) + " MB in three runs)"
            if r.get("precompute_peaks_mb") else "one run)"),
         f"{r['precompute_s']:.2f} s", f"{r['precompute_peak_mb']:.0f} MB", ""),
        ("precompute / floor process", f"{r['precompute_s'] / r['floor_process_s']:.2f}x", "", "≤ 1.1x"),
        ("`mislabels fashion`: default ranking (whole process)", f"{r['ranking_s']:.2f} s",
         f"{r['ranking_peak_mb']:.0f} MB", "≤ 10 s, ≤ 1.5 GB"),
        ("`precompute fashion --all-rankings`: the other rankings (whole process)", f"{r['all_rankings_s']:.2f} s",
         f"{r['all_rankings_peak_mb']:.0f} MB", ""),
        ("app: first visit to Review after precompute (server already up)", f"{r['review_first_visit_s']:.2f} s", "",
         "≤ 5 s"),
        (f"app: key press -> next item, p50 / p95 ({len(keys)} keys)",
         f"{statistics.median(keys):.3f} / {p95(keys):.3f} s", "", "p95 ≤ 0.5 s"),
        ("app: key presses lost (no next item within 60 s; not in the figures above)",
         f"{r.get('review_keys_lost', 0)}", "", ""),
        ("app: Influence first load", f"{r['influence_first_load_s']:.2f} s", "", ""),
        ("app: pick -> both galleries, first / median of the next",
         f"{r['pick_cold_s']:.2f} / {statistics.median(r['pick_warm_s']):.2f} s", "", "≤ 0.5 s"),
        ("app: Evaluation first load (its charts drawn)", f"{r['evaluation_first_load_s']:.2f} s", "", "≤ 3 s"),
    ]


def rows_1m(m: dict, r60: dict) -> list[tuple[str, str, str, str]]:
    keys = m["review_key_s"]
    n = f"{m['n']:,}"
    peak = max(m["killed_peak_mb"], m["resume_peak_mb"])
    return [
        (f"make the {n}-image npy set (`benchmarks/make_million.py`)", f"{m['make_s']:.1f} s", "", ""),
        (f"`precompute` killed (SIGKILL) at {m['killed_at_batches']:,} of {m['batches']:,} batches",
         f"{m['killed_after_s']:.1f} s", f"{m['killed_peak_mb']:.0f} MB", ""),
        ("`precompute` resumed to the end", f"{m['resume_s']:.1f} s", f"{m['resume_peak_mb']:.0f} MB", ""),
        ("precompute peak / the 60k run's", f"{peak / r60['precompute_peak_mb']:.2f}x", "", "≤ 1.10x"),
        ("`mislabels`: default ranking (whole process)", f"{m['ranking_s']:.1f} s", f"{m['ranking_peak_mb']:.0f} MB",
         "≤ 5 min"),
    ] + [("  " + line, "", "", "recall ≥ 0.95") for line in m["ranking_searches"]] + [
        ("exact top-10 for 4 test images: first call / median of 3 others (in process)",
         f"{m['topk_first_s']:.2f} / {m['topk_warm_s']:.2f} s", "", "≤ 1 s"),
        ("top-10 for 4 test images through the index (`InfluenceIndex`: 32 principal directions, "
         "100 candidates scored exactly), median of 3", f"{m['topk_index_warm_s'] * 1000:.1f} ms", "", "≤ 50 ms"),
        ("  its recall@10 against the exact top-10 (12 test images)", f"{m['topk_index_recall']:.3f}", "", "≥ 0.95"),
        ("  building the index (once, kept beside the store)", f"{m['topk_index_build_s']:.1f} s", "", ""),
        ("app: first visit to Review (server already up)", f"{m['review_first_visit_s']:.2f} s", "", ""),
        (f"app: key press -> next item, p50 / p95 ({len(keys)} keys)",
         f"{statistics.median(keys):.3f} / {p95(keys):.3f} s", "", "p95 ≤ 0.5 s"),
        ("app: key presses lost (no next item within 60 s; not in the figures above)", f"{m.get('review_keys_lost', 0)}",
         "", ""),
    ]


def table(rows: list[tuple[str, str, str, str]]) -> str:
    return ("| step | time | peak RSS | target (issue #12) |\n|---|---|---|---|\n"
            + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20, help="review key presses to time")
    ap.add_argument("--picks", type=int, default=5, help="Influence picks to time after the first")
    ap.add_argument("--million", type=int, default=1_000_000, help="rows of the large npy set (0: skip that half)")
    ap.add_argument("--million-dir", type=Path, default=REPO / "benchmarks" / "_work" / "million")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "app_scale.md")
    ap.add_argument("--large-only", action="store_true",
                    help="run only the large half; the 60k figures are read from --out's .json (an earlier run)")
    args = ap.parse_args(argv)
    from tracin_core.audit.datasets import FASHION_MNIST_ROOT

    if not FASHION_MNIST_ROOT.is_dir():
        raise SystemExit("needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
    cmd = "python benchmarks/app_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.large_only:
        earlier = json.loads(args.out.with_suffix(".json").read_text())
        r = earlier["60k"]
        r["from_earlier_run"] = r.get("from_earlier_run") or earlier.get("date") or "an earlier run"
        m = million_steps(args.million, args.keys, args.million_dir)
        print(report(args.out, cmd, r, m))
        return 0
    cache = Path(tempfile.mkdtemp(prefix="tracin_scale_"))
    env = dict(os.environ, TRACIN_CACHE=str(cache), PYTHONPATH=str(REPO))
    r: dict = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"}
    floor_s, floor_mb, text = run_step([sys.executable, "-c", FLOOR.format(cache=str(cache / "floor"))], env)
    r["floor_s"] = json.loads(text.strip().splitlines()[-1])["seconds"]
    r["floor_process_s"], r["floor_peak_mb"] = floor_s, floor_mb
    precompute = [sys.executable, "-m", "tracin_core", "precompute", "fashion", "--skip-ranking"]
    r["precompute_s"], first_peak, _ = run_step(precompute, env)
    # the pass's peak varies run to run by about one batch's activations (837-951 MB measured
    # minutes apart): two more passes into stores of their own, and the peak is the highest,
    # as the million-row figure is the higher of its two runs (killed, resumed)
    peaks = [first_peak]
    for i in range(2):
        again = dict(env, TRACIN_CACHE=str(cache / f"again{i}"))
        peaks.append(run_step(precompute, again)[1])
        shutil.rmtree(cache / f"again{i}", ignore_errors=True)
    r["precompute_peaks_mb"] = peaks
    r["precompute_peak_mb"] = max(peaks)
    err: list[str] = []
    r["ranking_s"], r["ranking_peak_mb"], _ = run_step(
        [sys.executable, "-m", "tracin_core", "mislabels", "fashion", "--out", str(cache / "queue.csv")], env, err)
    r["ranking_searches"] = [line for line in err if "neighbour search" in line]
    r["all_rankings_s"], r["all_rankings_peak_mb"], _ = run_step(
        [sys.executable, "-m", "tracin_core", "precompute", "fashion", "--all-rankings"], env)
    r.update(app_steps(cache, args.keys, args.picks))
    report(args.out, cmd, r, None, pending=bool(args.million))  # kept even if the large half stops
    m = million_steps(args.million, args.keys, args.million_dir) if args.million else None
    print(report(args.out, cmd, r, m))
    return 0


def report(out: Path, cmd: str, r: dict, m: dict | None, pending: bool = False) -> str:
    """Write the tables (and the raw figures as ``.json``) to ``out``; returns the text."""
    text = ("# The app and the engine at 60,000 images (built-in Fashion-MNIST workspace)"
            + (f" and at {m['n']:,}" if m else "") + "\n\n"
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
            f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n"
            f"- command: `{cmd.strip()}`\n\n## 60,000 images\n\n"
            + (f"(measured by an earlier run of this script, {r['from_earlier_run']}, with the same code)\n\n"
               if r.get("from_earlier_run") else "")
            + table(rows_60k(r)))
    text += "".join(f"\n- {line}" for line in r["ranking_searches"]) + "\n"
    if m:
        text += f"\n## {m['n']:,} images (`npy` kind, memory-mapped)\n\n" + table(rows_1m(m, r))
    elif pending:
        text += "\n(The large half was still running when this was written.)\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"60k": r, "large": m}, indent=2) + "\n")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
