"""The built-in Fashion-MNIST workspace (60,000 training images) from the shell and in the app.

    python benchmarks/app_scale.py [--keys 20] [--picks 5]

Needs Debian's ``dataset-fashion-mnist``. In a fresh cache folder, each step in its own
process (wall time, and peak RSS sampled every 50 ms):

* floor: decode the 60,000 images and run the six checkpoints' no-grad forwards, batch by
  batch (what any one-pass method must do at least);
* ``precompute fashion --skip-ranking``: the training pass;
* ``mislabels fashion``: the default ranking (the process opens the workspace too);
* ``precompute fashion --all-rankings``: every other ranking the Evaluation page shows,
  kept beside the store (the pass is already done);

then ``streamlit run app.py`` on that cache and headless Chromium (Debian's
``/usr/bin/chromium``): the first visit to Review after precompute, key press -> next item,
Influence's pick -> both galleries, and the first load of Evaluation.

The table goes to stdout and, with the date, the machine and the command, to
``benchmarks/results/app_scale.md`` (and ``.json``). The 1,000,000-image half of issue #12
is not built yet. Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.app_latency import GALLERIES_SHOWN, wait_idle  # noqa: E402
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402

FLOOR = """
import copy, json, time, torch
from tracin_core import Workspace
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


def run_step(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one process, RSS sampled every 50 ms."""
    import psutil

    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t, peak / 2**20, out


def app_steps(cache: Path, keys: int, picks: int) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {}
    server = AppServer(cache, cache / "streamlit.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(300_000)
            cap = ".st-key-rv_item_panel [data-testid='stImageCaption']"
            t = time.perf_counter()
            pg.goto(server.url + "/review?workspace=fashion&reviewer=bench")
            pg.locator(cap).first.wait_for()
            out["review_first_visit_s"] = time.perf_counter() - t
            wait_idle(pg)
            lat = []
            for _ in range(keys):
                before = pg.locator(cap).first.inner_text().strip()
                pg.locator("h1").first.click()
                t = time.perf_counter()
                pg.keyboard.press("a")
                pg.wait_for_function(
                    "(b) => { const c = document.querySelector(\".st-key-rv_item_panel [data-testid='stImageCaption']\");"
                    " return c && c.innerText.trim() !== b; }", arg=before, polling=20)
                lat.append(time.perf_counter() - t)
                wait_idle(pg)
            out["review_key_s"] = lat
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
            pg.wait_for_function("() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"]').length >= 4",
                                 polling=50)
            wait_idle(pg)
            out["evaluation_first_load_s"] = time.perf_counter() - t
            browser.close()
    finally:
        server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20, help="review key presses to time")
    ap.add_argument("--picks", type=int, default=5, help="Influence picks to time after the first")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "app_scale.md")
    args = ap.parse_args(argv)
    from tracin_core.datasets import FASHION_MNIST_ROOT

    if not FASHION_MNIST_ROOT.is_dir():
        raise SystemExit("needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
    cache = Path(tempfile.mkdtemp(prefix="tracin_scale_"))
    env = dict(os.environ, TRACIN_CACHE=str(cache), PYTHONPATH=str(REPO))
    r: dict = {}
    floor_s, floor_mb, text = run_step([sys.executable, "-c", FLOOR.format(cache=str(cache / "floor"))], env)
    r["floor_s"] = json.loads(text.strip().splitlines()[-1])["seconds"]
    r["floor_process_s"], r["floor_peak_mb"] = floor_s, floor_mb
    r["precompute_s"], r["precompute_peak_mb"], _ = run_step(
        [sys.executable, "-m", "tracin_core", "precompute", "fashion", "--skip-ranking"], env)
    r["ranking_s"], r["ranking_peak_mb"], _ = run_step(
        [sys.executable, "-m", "tracin_core", "mislabels", "fashion", "--out", str(cache / "queue.csv")], env)
    r["all_rankings_s"], r["all_rankings_peak_mb"], _ = run_step(
        [sys.executable, "-m", "tracin_core", "precompute", "fashion", "--all-rankings"], env)
    r.update(app_steps(cache, args.keys, args.picks))

    keys = r["review_key_s"]
    p95 = sorted(keys)[max(0, int(round(0.95 * (len(keys) - 1))))]
    rows = [
        ("floor: decode 60,000 + six no-grad forwards (in-process time)", f"{r['floor_s']:.2f} s", ""),
        ("floor process (imports, data, model included)", f"{r['floor_process_s']:.2f} s",
         f"{r['floor_peak_mb']:.0f} MB"),
        ("`precompute fashion --skip-ranking` (whole process)", f"{r['precompute_s']:.2f} s",
         f"{r['precompute_peak_mb']:.0f} MB"),
        ("precompute / floor process", f"{r['precompute_s'] / r['floor_process_s']:.2f}x", ""),
        ("`mislabels fashion`: default ranking (whole process)", f"{r['ranking_s']:.2f} s",
         f"{r['ranking_peak_mb']:.0f} MB"),
        ("`precompute fashion --all-rankings`: the other rankings (whole process)", f"{r['all_rankings_s']:.2f} s",
         f"{r['all_rankings_peak_mb']:.0f} MB"),
        ("app: first visit to Review after precompute (server already up)", f"{r['review_first_visit_s']:.2f} s", ""),
        (f"app: key press -> next item, p50 / p95 ({len(keys)} keys)",
         f"{statistics.median(keys):.3f} / {p95:.3f} s", ""),
        ("app: Influence first load", f"{r['influence_first_load_s']:.2f} s", ""),
        ("app: pick -> both galleries, first / median of the next",
         f"{r['pick_cold_s']:.2f} / {statistics.median(r['pick_warm_s']):.2f} s", ""),
        ("app: Evaluation first load (four charts)", f"{r['evaluation_first_load_s']:.2f} s", ""),
    ]
    cmd = "python benchmarks/app_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"# The app and the engine at 60,000 images (built-in Fashion-MNIST workspace)\n\n"
              f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
              f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n"
              f"- command: `{cmd.strip()}`\n\n")
    table = "| step | time | peak RSS |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows) + "\n"
    print(header + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + table)
    args.out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
