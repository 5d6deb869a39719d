"""Latency of the app as a user sees it, in headless Chromium.

    python benchmarks/app_latency.py [--repeats 5] [--out benchmarks/results/app_latency.md]

Starts ``streamlit run app.py`` with a fresh cache (TRACIN_CACHE in a temporary folder, so
nothing is precomputed), drives Debian's /usr/bin/chromium with Playwright and prints:

* process start -> the Workspace page showing the demo's digits (target <= 10 s);
* a click on "Pick" on the Influence page -> both galleries shown with every image loaded
  (target <= 1 s; the first pick of a fresh server is reported separately as "cold");
* pressing "a" (Accept) on the Review page -> the next item's "Item #" caption
  (target <= 0.5 s; "n/a" while the Review page has no such buttons);
* then each of the keys r (relabel), e (exclude), u (undo) once -> the item changes
  (bound 5 s: the check the browser test used to make; tests never assert on time).

The table goes to stdout and, with the date, the machine and the command, to ``--out``
(Markdown) and the same name with ``.json`` (every number), under benchmarks/results/.

Chromium is started before the server, so its own start-up is not counted.
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
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402  (one definition)

TEST_INDICES = [3, 17, 25, 8, 36, 12, 29, 1, 33, 20]

DIGITS_SHOWN = """() => {
  const imgs = [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')];
  return imgs.length >= 24 && imgs.every(i => i.complete && i.naturalWidth > 0)
    && document.body.innerText.includes('#23 · ');
}"""

GALLERIES_SHOWN = """([idx, k]) => {
  for (const kind of ['p', 'o']) {
    const box = document.querySelector('.st-key-gallery_' + kind);
    if (!box) return false;
    const head = box.querySelector('h3');
    // the whole index: "of test #1" must not match the previous pick's "of test #12"
    if (!head || !new RegExp('of test #' + idx + '(?![0-9])').test(head.textContent)) return false;
    if (box.querySelector('[data-stale="true"]')) return false;
    const imgs = [...box.querySelectorAll('img')];  // inline (data URI) thumbnails, decoded
    if (imgs.length !== k || !imgs.every(i => i.complete && i.naturalWidth > 0)) return false;
  }
  return true;
}"""

ITEM_CAPTION = """() => {
  const m = document.body.innerText.match(/Item #(\\d+)/);
  return m ? m[1] : null;
}"""


def wait_idle(pg, timeout: float = 120_000) -> None:
    """The script run is over: no "Running…" widget and no stale (dimmed) elements."""
    pg.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && !document.querySelector('[data-stale=\"true\"]')", timeout=timeout)


def fmt(seconds: list[float]) -> tuple[str, str]:
    if not seconds:
        return "n/a", "n/a"
    return f"{statistics.median(seconds):.2f} s", f"{max(seconds):.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="picks and review actions to time (default 5)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "app_latency.md",
                    help="Markdown results file (the numbers also go to the same name with .json)")
    ap.add_argument("--keep-cache", action="store_true", help="keep the temporary cache folder")
    args = ap.parse_args()
    repeats = max(1, min(args.repeats, len(TEST_INDICES) - 1))

    from playwright.sync_api import sync_playwright

    cache = Path(tempfile.mkdtemp(prefix="tracin_latency_"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TRACIN_CACHE=str(cache), TRACIN_REVIEW_DB=str(cache / "reviews.sqlite"),
               PYTHONPATH=str(REPO))
    log = open(cache / "streamlit.log", "w")
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    proc = None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(120_000)

            # -------- process start -> digits on the first page
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                 "--server.address", "127.0.0.1", "--server.headless", "true"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"streamlit exited early; see {cache / 'streamlit.log'}")
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    time.sleep(0.05)
                if time.monotonic() - t0 > 120:
                    raise SystemExit("streamlit did not become healthy in 120 s")
            t_health = time.monotonic() - t0
            pg.goto(url)
            pg.wait_for_function(DIGITS_SHOWN, polling="raf")
            t_digits = time.monotonic() - t0
            results.update(server_healthy_s=t_health, first_digits_s=t_digits)
            pg.get_by_text("Open another workspace").wait_for()
            wait_idle(pg)  # the feature store is built by now

            # -------- Influence: pick -> both galleries
            pg.goto(url + "/influence")
            pg.locator(".st-key-pick_0 button").wait_for()
            wait_idle(pg)
            picks: list[float] = []
            for idx in TEST_INDICES[: repeats + 1]:
                button = pg.locator(f".st-key-pick_{idx} button")
                button.scroll_into_view_if_needed()
                t = time.monotonic()
                button.click()
                pg.wait_for_function(GALLERIES_SHOWN, arg=[idx, 8], polling="raf")
                picks.append(time.monotonic() - t)
                wait_idle(pg)
            results.update(pick_cold_s=picks[0], pick_warm_s=picks[1:])

            # -------- Review: "a" -> next item
            review: list[float] = []
            review_note = ""
            pg.goto(url + "/review")
            try:
                pg.get_by_role("button", name="Accept (A)").wait_for(timeout=60_000)
                wait_idle(pg)
            except Exception:  # noqa: BLE001 - the page is not there (yet)
                review_note = "n/a (review page missing)"
            if not review_note:
                for _ in range(repeats):
                    pg.locator("h1").first.click()  # focus the page, not an input, so shortcuts reach it
                    before = pg.evaluate(ITEM_CAPTION)
                    if before is None:
                        review_note = "n/a (no 'Item #' caption)"
                        break
                    t = time.monotonic()
                    pg.keyboard.press("a")
                    try:
                        pg.wait_for_function(
                            "(b) => { const m = document.body.innerText.match(/Item #(\\d+)/);"
                            " return m && m[1] !== b; }", arg=before, polling="raf", timeout=30_000)
                    except Exception:  # noqa: BLE001
                        review_note = "n/a (the item did not change after 'a')"
                        break
                    review.append(time.monotonic() - t)
                    wait_idle(pg)
                    pg.wait_for_timeout(300)  # let the run finish before the next key press
            # -------- Review: r, e, u once each -> the item changes
            keys: dict[str, float] = {}
            if not review_note:
                pg.wait_for_function("() => window.__tracinRelabelKey === true", timeout=30_000)
                for key in ("r", "e", "u"):
                    pg.locator("h1").first.click()
                    before = pg.evaluate(ITEM_CAPTION)
                    t = time.monotonic()
                    pg.keyboard.press(key)
                    try:
                        pg.wait_for_function(
                            "(b) => { const m = document.body.innerText.match(/Item #(\\d+)/);"
                            " return m && m[1] !== b; }", arg=before, polling="raf", timeout=30_000)
                    except Exception:  # noqa: BLE001
                        review_note = f"n/a (the item did not change after {key!r})"
                        break
                    keys[key] = time.monotonic() - t
                    wait_idle(pg)
                    pg.wait_for_timeout(300)
            results.update(review_next_s=review, review_note=review_note, review_keys_s=keys)
        finally:
            browser.close()
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
            if not args.keep_cache:
                shutil.rmtree(cache, ignore_errors=True)

    rows = [
        ("process start -> server healthy", f"{t_health:.2f} s", "", "", ""),
        ("process start -> first page shows digits", f"{t_digits:.2f} s", "", "<= 10 s",
         "yes" if t_digits <= 10 else "NO"),
        ("pick test image -> both galleries (cold, 1st)", f"{picks[0]:.2f} s", "", "<= 1 s",
         "yes" if picks[0] <= 1 else "NO"),
        ("pick test image -> both galleries (warm, median / max of %d)" % len(picks[1:]), *fmt(picks[1:]), "<= 1 s",
         "yes" if picks[1:] and max(picks[1:]) <= 1 else "NO"),
    ]
    if review:
        rows.append(("review 'a' -> next item (median / max of %d)" % len(review), *fmt(review), "<= 0.5 s",
                     "yes" if max(review) <= 0.5 else "NO"))
    else:
        rows.append(("review 'a' -> next item", review_note, "", "<= 0.5 s", ""))
    keys = results.get("review_keys_s") or {}
    if keys:
        every = [review[0]] + list(keys.values()) if review else list(keys.values())
        rows.append(("review keys a, r, e, u -> item changes (%s)" % ", ".join(
            f"{k} {v:.2f} s" for k, v in ([("a", review[0])] if review else []) + list(keys.items())),
            *fmt(every), "<= 5 s", "yes" if max(every) <= 5 else "NO"))
    w = max(len(r[0]) for r in rows)
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except Exception:  # noqa: BLE001
        cpu = platform.processor() or platform.machine()
    command = "python benchmarks/app_latency.py " + " ".join(sys.argv[1:])
    date = time.strftime("%Y-%m-%d %H:%M")
    machine = f"{cpu}, {os.cpu_count()} logical CPUs"
    lines = [f"Chromium headless, {os.cpu_count()} CPU cores, load average at start "
             f"{results['load_average_at_start']:.1f}",
             f"| {'measurement'.ljust(w)} | median    | max    | target   | met |",
             f"|{'-' * (w + 2)}|-----------|--------|----------|-----|"]
    for name, med, mx, target, ok in rows:
        lines.append(f"| {name.ljust(w)} | {med:<9} | {mx:<6} | {target:<8} | {ok:<3} |")
    if review_note:
        lines.append(f"note: review stopped early: {review_note}")
    print("\n".join(lines))
    results.update(date=date, machine=machine, command=command.strip(), python=platform.python_version())
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([
        "# App latency (headless Chromium)", "",
        f"Command: `{command.strip()}`  ",
        f"Date: {date}; machine: {machine}; Python {platform.python_version()}; Debian chromium "
        f"({CHROMIUM}) through Playwright. A fresh cache: nothing precomputed before the server starts. "
        "The machine may be shared: see the load average below.", "", *lines, ""]))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
