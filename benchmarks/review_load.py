"""Ten annotators at once: each signs in, then reviews 20 items with the keyboard.

One ``streamlit run app.py`` on loopback, signing users in through the test OIDC provider
(``tests/oidc/server.js``; ``npm ci --prefix tests/oidc`` first), ten headless Chromium
contexts (Debian's ``/usr/bin/chromium``) driven concurrently with Playwright's async API.
It prints p50 / p95 of "key press -> next item shown", then checks the store: exactly
``annotators x items`` decisions, none duplicated, and no item shown to two annotators.
The table goes to ``benchmarks/results/review_load.md`` (with the date, the machine and the
command). Timings are printed, never asserted.

    python benchmarks/review_load.py [--annotators 10] [--items 20]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, AppServer, free_port, write_server_config  # noqa: E402
from tests.oidc_provider import USER_COOKIE, running_oidc_provider  # noqa: E402

CAPTION = ".st-key-rv_item_panel [data-testid='stImageCaption']"
#: Playwright polls these conditions every POLL_MS in each page. Its default, every animation
#: frame, keeps ten headless pages drawing 60 frames a second: the harness then eats the
#: CPU the browsers need, and the latency measured is mostly the harness's own.
POLL_MS = 20
IDLE = ("() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " return app && app.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector('[data-stale=\"true\"]'); }")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


async def annotator(browser, provider, url: str, email: str, items: int, start: asyncio.Event,
                    timeout_ms: int, think: float = 0.0) -> tuple[list[float], list[int]]:
    from urllib.parse import quote

    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await ctx.add_cookies([{"name": USER_COOKIE, "value": quote(email, safe=""), "url": provider.issuer}])
    page = await ctx.new_page()
    page.set_default_timeout(timeout_ms)
    try:
        await page.goto(url)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_text(f"Signed in as {email}").wait_for()
        await page.goto(url + "/review")
        await page.locator(CAPTION).first.wait_for(timeout=300_000)
        await page.wait_for_function(IDLE, polling=POLL_MS)
        await page.wait_for_function("() => window.__tracinRelabelKey === true", polling=POLL_MS)
        await start.wait()
        seen, latencies = [], []
        rng = random.Random(email)
        for _ in range(items):
            await page.wait_for_function(IDLE, polling=POLL_MS)
            if think:  # a person looks at the item before pressing a key
                await asyncio.sleep(rng.uniform(0.5, 1.5) * think)
            before = (await page.locator(CAPTION).first.inner_text()).strip()
            seen.append(int(before.split("#")[1]))
            await page.locator("h1").first.click()
            t0 = time.perf_counter()
            await page.keyboard.press("a")
            await page.wait_for_function(
                "(b) => { const c = document.querySelector(\"" + CAPTION.replace('"', '\\"') + "\");"
                " return c && c.innerText.trim() !== b; }", arg=before, polling=POLL_MS)
            latencies.append(time.perf_counter() - t0)
        await page.wait_for_function(IDLE, polling=POLL_MS)
        return latencies, seen
    finally:
        await ctx.close()


async def run(args) -> dict:
    from playwright.async_api import async_playwright

    work = Path(tempfile.mkdtemp(prefix="review-load-"))
    emails = [f"annotator{i:02d}@example.com" for i in range(1, args.annotators + 1)]
    config = write_server_config(work / "tracin_audit.toml", mode="oidc",
                                 users={e: "annotator" for e in emails})
    with running_oidc_provider(work / "provider.log") as provider:
        port = free_port()
        server = AppServer(work, work / "streamlit.log", config=config, port=port,
                           secrets=provider.secrets_toml(f"http://127.0.0.1:{port}/oauth2callback"))
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                start = asyncio.Event()
                tasks = [asyncio.create_task(annotator(browser, provider, server.url, e, args.items, start,
                                                       args.timeout * 1000, args.think)) for e in emails]
                # every annotator signed in and holding an item on the Review page, then all
                # start at once (bounded; a task that fails early ends the wait too)
                deadline = time.monotonic() + 600
                while _ready_count(server) < len(emails) and not any(t.done() for t in tasks):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the annotators did not all reach the Review page in 600 s")
                    await asyncio.sleep(0.5)
                if os.environ.get("REVIEW_LOAD_PYSPY"):  # developer aid: profile the app server
                    import subprocess
                    spy = subprocess.Popen(["py-spy", "record", "-o", os.environ["REVIEW_LOAD_PYSPY"], "-f", "raw",
                                            "-p", str(server.proc.pid), "-r", "50"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cpu0 = _cpu_seconds(server.proc.pid)
                all0 = _machine_cpu_seconds()
                t0 = time.perf_counter()
                start.set()
                results = await asyncio.gather(*tasks)
                wall = time.perf_counter() - t0
                server_cpu = _cpu_seconds(server.proc.pid) - cpu0
                all_cpu = _machine_cpu_seconds() - all0
                if os.environ.get("REVIEW_LOAD_PYSPY"):
                    spy.send_signal(2)
                    spy.wait(60)
                await browser.close()
        finally:
            server.stop()
    with sqlite3.connect(server.review_db) as conn:
        events = conn.execute("SELECT reviewer, item_id, action FROM events").fetchall()
    return {"results": dict(zip(emails, results)), "events": events, "wall": wall, "server_cpu": server_cpu,
            "all_cpu": all_cpu}


def _machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (every core; server, browsers, everything)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ready_count(server: AppServer) -> int:
    """Annotators holding an item (each claims one when its Review page is shown)."""
    try:
        with sqlite3.connect(server.review_db) as conn:
            return conn.execute("SELECT COUNT(DISTINCT reviewer) FROM claims").fetchone()[0]
    except sqlite3.Error:
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--annotators", type=int, default=10)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--timeout", type=int, default=60, help="seconds any one wait may take")
    ap.add_argument("--think", type=float, default=2.0,
                    help="mean seconds an annotator looks at an item before the key (uniform 0.5x-1.5x); "
                         "0 = press at once (a stress test: ten browsers on the same cores)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "review_load.md")
    args = ap.parse_args(argv)
    out = asyncio.run(run(args))
    latencies = [x for lat, _ in out["results"].values() for x in lat]
    shown = [i for _, seen in out["results"].values() for i in seen]
    events = out["events"]
    decisions = [(r, i) for r, i, a in events if a == "accept"]
    expected = args.annotators * args.items
    checks = {
        f"decisions stored = {expected}": len(decisions) == expected,
        "no item decided twice": len({i for _, i in decisions}) == len(decisions),
        "no item shown to two annotators": len(set(shown)) == len(shown),
        "every decision by the signed-in annotator who saw it": all(
            (r, i) in set(decisions) for r, (_, seen) in out["results"].items() for i in seen),
    }
    rows = [
        ("annotators x items", f"{args.annotators} x {args.items}"),
        ("think time before each key", f"{args.think:g} s (uniform {0.5 * args.think:g}-{1.5 * args.think:g} s)"
         if args.think else "none: each key pressed as soon as the item shows"),
        ("key press -> next item, p50", f"{statistics.median(latencies):.3f} s"),
        ("key press -> next item, p95", f"{percentile(latencies, 95):.3f} s"),
        ("key press -> next item, max", f"{max(latencies):.3f} s"),
        ("wall time of the review phase", f"{out['wall']:.1f} s"),
        ("app server CPU per decision", f"{out['server_cpu'] / max(1, len(latencies)):.3f} s"),
        ("machine CPU per decision (server, browsers, driver, anything else)",
         f"{out['all_cpu'] / max(1, len(latencies)):.3f} s"),
        ("machine busy during the review phase",
         f"{out['all_cpu'] / out['wall'] / (os.cpu_count() or 1):.0%} of {os.cpu_count()} cores"),
    ] + [(name, "yes" if ok else "NO") for name, ok in checks.items()]
    cmd = "python benchmarks/review_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"# Review load: {args.annotators} annotators at once\n\n"
              f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
              f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"one Streamlit server + {args.annotators} headless Chromium contexts on the same machine\n"
              f"- command: `{cmd.strip()}`\n\n")
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
    print(header + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + table)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
