"""Captum 0.9 vs tracin_core on the settings of Captum's TracInCP CIFAR-10 tutorial.

One run times both libraries. Every (case, library) pair runs in a fresh subprocess of
this script (``--case NAME --lib captum|ours --json``) so that its peak memory is that
process's max RSS and nothing (store, caches, allocator) leaks between cases.

    python benchmarks/vs_captum.py                       # full size: 50,000 train images
    python benchmarks/vs_captum.py --n-train 3000 --cp-n 500 --out /tmp/small.md

Data: random images in CIFAR-10's python format, read by torchvision's ``CIFAR10`` with
the tutorial's transform (both libraries get the same Dataset). Model: the tutorial's
``Net`` (``tracin_core.audit.models.TutorialCifarNet``) with 6 tutorial-style checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    Timer,
    checkpoints_load_func,
    cpu_busy_seconds,
    wait_quiet,
    ensure_checkpoints,
    ensure_cifar_folder,
    load_split,
    max_elem_rel_diff,
    max_rel_diff,
    peak_rss_mb,
    test_batch,
)

#: "floor" (kept as the results' key) is Captum's way of decoding and running: the training
#: set decoded one image at a time by torchvision's DataLoader, and 6 no-grad forwards per
#: batch; it bounds a pass that decodes like Captum, not tracin_core (which decodes a batch
#: at a time). "forward_floor" bounds tracin_core itself: the model's 6 no-grad forwards per
#: batch on tensors decoded before the clock starts (in NCHW and in channels-last layout;
#: the faster counts).
CASES = ["floor", "forward_floor", "fast_pair", "fast_self", "randproj_init", "cp_self"]
LIBS = {"floor": ["ours", "nochurn"], "forward_floor": ["ours"], "fast_pair": ["captum", "ours", "itemwise", "nchw"],
        "fast_self": ["captum", "ours"], "randproj_init": ["captum", "ours"], "cp_self": ["captum", "ours"]}
RESULT_TAG = "@@RESULT@@ "
#: glibc settings for the "nochurn" floor: never return freed memory to the OS, so the
#: 38 MB activation buffers of a 2048 batch are not unmapped and page-faulted back in on
#: every forward (with the defaults, a 50k-image floor takes ~6 M page faults).
NOCHURN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}
#: tracin_core with one of its layout/decoding choices switched off (same scores), and the
#: report row that says what: "itemwise" decodes the training set one example at a time, as
#: Captum does (batch decoding of torchvision datasets off; same tensors, bitwise); "nchw"
#: runs the model's convolutions in the default NCHW layout (channels-last planning off)
VARIANTS = {
    "itemwise": ({"TRACIN_BATCH_DECODE": "0"}, "tracin_core decoding one image at a time like Captum (TRACIN_BATCH_DECODE=0)"),
    "nchw": ({"TRACIN_CHANNELS_LAST": "0"}, "tracin_core with the forward passes in NCHW layout (TRACIN_CHANNELS_LAST=0)"),
}

FAST_BATCH = 2048       # tutorial: TracInCPFast batch_size
RANDPROJ_BATCH = 128    # tutorial: TracInCPFastRandProj batch_size
CP_BATCH = 256
K = 10
PAIR_TEST = list(range(0, 4))
INTERACTIVE_REPEATS = 5
RECALL_TEST = list(range(0, 20))


# =============================================================================== one case


def _setup(args, lib: str):
    """Import the library, read the data, build the net: everything not timed."""
    import torch
    from torch import nn

    if lib == "captum":
        import captum.influence  # noqa: F401
        from captum.influence._utils.nearest_neighbors import AnnoyNearestNeighbors  # noqa: F401
    else:
        import tracin_core.engine.tracin  # noqa: F401
    from tracin_core.audit.models import TutorialCifarNet

    work = Path(args.work)
    root = Path(args.data_root)
    ckpts = json.loads((root / "checkpoints" / "DONE.json").read_text())
    paths = sorted(str(p) for p in (root / "checkpoints").glob("*.pt"))
    assert len(paths) == 6, paths
    train_ds = load_split(root, True)
    test_ds = load_split(root, False)
    torch.manual_seed(0)
    net = TutorialCifarNet()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    return dict(torch=torch, nn=nn, work=work, paths=paths, train_ds=train_ds, test_ds=test_ds,
                net=net, loss_fn=loss_fn, TutorialCifarNet=TutorialCifarNet, ckpt_info=ckpts)


def _classes(lib: str):
    if lib == "captum":
        from captum.influence import TracInCP, TracInCPFast, TracInCPFastRandProj
        from captum.influence._utils.nearest_neighbors import AnnoyNearestNeighbors
    else:
        from tracin_core import AnnoyNearestNeighbors, TracInCP, TracInCPFast, TracInCPFastRandProj
    return TracInCP, TracInCPFast, TracInCPFastRandProj, AnnoyNearestNeighbors


def _out_file(args, case: str, lib: str) -> Path:
    d = Path(args.work) / f"results_{args.n_train}_{args.n_test_pool}_{args.cp_n}"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{case}_{lib}.pt"


def run_case(args) -> dict:
    case, lib = args.case, args.lib
    env = _setup(args, lib)
    torch = env["torch"]
    net, paths, train_ds, test_ds, loss_fn = env["net"], env["paths"], env["train_ds"], env["test_ds"], env["loss_fn"]
    res: dict = {"case": case, "lib": lib, "base_mb": peak_rss_mb(), "threads": torch.get_num_threads()}

    if case == "floor":
        from torch.utils.data import DataLoader

        models = []
        for p in paths:
            m = env["TutorialCifarNet"]()
            checkpoints_load_func(m, p)
            m.eval()
            models.append(m)
        n = 0
        with Timer() as t, torch.no_grad():
            for x, _y in DataLoader(train_ds, batch_size=FAST_BATCH, shuffle=False):
                for m in models:
                    m(x)
                n += len(x)
        assert n == len(train_ds)
        # the decoding alone, for reference
        with Timer() as t_dec:
            for _x, _y in DataLoader(train_ds, batch_size=FAST_BATCH, shuffle=False):
                pass
        res.update(seconds=t.s, cpu_s=t.cpu, decode_s=t_dec.s, peak_mb=peak_rss_mb())
        return res

    if case == "forward_floor":
        from torch.utils.data import DataLoader

        models = []
        for p in paths:
            m = env["TutorialCifarNet"]()
            checkpoints_load_func(m, p)
            m.eval()
            models.append(m)
        # decoded before the clock starts (a batch at a time where tracin_core can: the
        # same tensors, bitwise); only the forwards are timed
        from tracin_core.engine.batching import batch_decoder, collated

        fast = batch_decoder(train_ds)
        from tracin_core.engine.tracin import PASS_BATCH  # the batch size tracin_core's pass runs

        loader = (DataLoader(fast, PASS_BATCH, shuffle=False, collate_fn=collated) if fast is not None
                  else DataLoader(train_ds, batch_size=PASS_BATCH, shuffle=False))
        with Timer() as t_dec:
            batches = [x for x, _y in loader]
        assert sum(len(x) for x in batches) == len(train_ds)
        # channels-last as tracin_core runs it (tracin_core.engine.featurize.ChannelsLast): the
        # output of the last module returning a 4-D tensor is made NCHW-contiguous again,
        # because the forward `.view`s it
        seen = []
        probes = [mod.register_forward_hook(
            lambda mod, _i, o: seen.append(mod) if torch.is_tensor(o) and o.dim() == 4 else None)
            for mod in models[0].modules() if mod is not models[0]]
        with torch.no_grad():
            models[0](batches[0][:2])
        for h in probes:
            h.remove()
        last = next(n for n, mod in models[0].named_modules() if mod is seen[-1])
        times = {}
        for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xs = [x.contiguous(memory_format=fmt) for x in batches]
            hooks = [] if layout == "nchw" else [
                m.get_submodule(last).register_forward_hook(lambda _m, _i, o: o.contiguous()) for m in models]
            with Timer() as t, torch.no_grad():
                for x in xs:
                    for m in models:
                        m(x)
            times[layout] = (t.s, t.cpu)
            for h in hooks:
                h.remove()
            del xs
        best = min(times, key=lambda k: times[k][0])
        res.update(seconds=times[best][0], cpu_s=times[best][1], layout=best, batch=PASS_BATCH,
                   nchw_s=times["nchw"][0], channels_last_s=times["channels_last"][0],
                   decode_s=t_dec.s, peak_mb=peak_rss_mb())
        return res

    TracInCP, TracInCPFast, TracInCPFastRandProj, NN = _classes(lib)
    # The tutorial passes final_fc_layer=list(net.children())[-1], which for this Net's
    # definition order is relu4 (not a Linear layer): we pass the real last FC layer, fc3.
    fc = net.fc3

    if case == "fast_pair":
        batch = test_batch(test_ds, PAIR_TEST)
        with Timer() as t:
            tr = TracInCPFast(net, fc, train_ds, paths, checkpoints_load_func, loss_fn=loss_fn,
                              batch_size=FAST_BATCH)
            p = tr.influence(batch, k=K, proponents=True)
            o = tr.influence(batch, k=K, proponents=False)
        res.update(seconds=t.s, cpu_s=t.cpu, peak_mb=peak_rss_mb())
        torch.save({"prop_idx": p.indices, "prop_scores": p.influence_scores,
                    "opp_idx": o.indices, "opp_scores": o.influence_scores}, _out_file(args, case, lib))
        if lib == "ours":  # fast_interactive: same instance, new test images each time
            times = []
            for r in range(INTERACTIVE_REPEATS):
                idx = [4 + 4 * r + j for j in range(4)]
                b = test_batch(test_ds, idx)
                with Timer() as ti:
                    tr.influence(b, k=K, proponents=True)
                    tr.influence(b, k=K, proponents=False)
                times.append(ti.s)
            with Timer() as ts:
                si = tr.self_influence()
            res.update(interactive_ms=statistics.median(times) * 1e3,
                       interactive_all_ms=[x * 1e3 for x in times],
                       self_after_ms=ts.s * 1e3, self_after_n=int(si.numel()),
                       peak_after_interactive_mb=peak_rss_mb())
        return res

    if case == "fast_self":
        with Timer() as t:
            tr = TracInCPFast(net, fc, train_ds, paths, checkpoints_load_func, loss_fn=loss_fn,
                              batch_size=FAST_BATCH)
            si = tr.self_influence()
        res.update(seconds=t.s, cpu_s=t.cpu, peak_mb=peak_rss_mb())
        torch.save({"self": si}, _out_file(args, case, lib))
        return res

    if case == "randproj_init":
        batch = test_batch(test_ds, PAIR_TEST)
        with Timer() as t:
            tr = TracInCPFastRandProj(net, fc, train_ds, paths, checkpoints_load_func, loss_fn=loss_fn,
                                      batch_size=RANDPROJ_BATCH, nearest_neighbors=NN(num_trees=100),
                                      projection_dim=100)
        with Timer() as tq:
            tr.influence(batch, k=K, proponents=True)
            tr.influence(batch, k=K, proponents=False)
        res.update(seconds=t.s, cpu_s=t.cpu, query_s=tq.s, peak_mb=peak_rss_mb())
        rb = test_batch(test_ds, RECALL_TEST)
        approx = tr.influence(rb, k=K, proponents=True).indices
        # exact reference, after the measurements: tracin_core's TracInCPFast (checked
        # against Captum's TracInCPFast in fast_pair)
        from tracin_core import TracInCPFast as ExactFast

        ref = ExactFast(env["TutorialCifarNet"](), "fc3", train_ds, paths, checkpoints_load_func,
                        loss_fn=loss_fn, batch_size=FAST_BATCH).influence(rb, k=K, proponents=True)
        hits = [len(set(approx[i].tolist()) & set(ref.indices[i].tolist())) for i in range(len(RECALL_TEST))]
        res.update(recall=sum(hits) / (K * len(RECALL_TEST)))
        torch.save({"approx_idx": approx, "exact_idx": ref.indices, "exact_scores": ref.influence_scores},
                   _out_file(args, case, lib))
        return res

    if case == "cp_self":
        from torch.utils.data import Subset

        sub = Subset(train_ds, range(min(args.cp_n, len(train_ds))))
        with Timer() as t:
            tr = TracInCP(net, sub, paths, checkpoints_load_func, layers=None, loss_fn=loss_fn,
                          batch_size=CP_BATCH, sample_wise_grads_per_batch=True)
            si = tr.self_influence()
        res.update(seconds=t.s, cpu_s=t.cpu, peak_mb=peak_rss_mb(), n=len(sub))
        torch.save({"self": si}, _out_file(args, case, lib))
        return res

    raise SystemExit(f"unknown case {case!r}")


# =============================================================================== driver


def _spawn_once(args, case: str, lib: str) -> dict:
    import resource

    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", case, "--lib", lib, "--json",
           "--n-train", str(args.n_train), "--n-test-pool", str(args.n_test_pool), "--cp-n", str(args.cp_n),
           "--work", str(args.work), "--data-root", str(args.data_root)]
    env = dict(os.environ)
    if lib == "nochurn":
        env.update(NOCHURN_ENV)
    if lib in VARIANTS:
        env.update(VARIANTS[lib][0])
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, _ = cpu_busy_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env)
    wall = time.perf_counter() - t0
    busy1, _ = cpu_busy_seconds()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    # CPU used by *other* processes while this one ran, in cores (a contention gauge)
    others = max(0.0, (busy1 - busy0) - own) / wall if wall > 0 else float("nan")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            out = json.loads(line[len(RESULT_TAG):])
            out.update(wall_s=wall, others_cores=others, minflt=ru1.ru_minflt - ru0.ru_minflt,
                       sys_s=ru1.ru_stime - ru0.ru_stime)
            return out
    tail = (proc.stderr or proc.stdout)[-3000:]
    print(f"[bench] {case}/{lib} FAILED (rc={proc.returncode}):\n{tail}", flush=True)
    return {"case": case, "lib": lib, "error": tail.strip().splitlines()[-1] if tail.strip() else f"rc={proc.returncode}"}


def spawn(args, case: str, lib: str) -> dict:
    """Run one (case, lib) ``--repeats`` times, each in a fresh process, and keep the fastest
    run (timeit's rule: the minimum is the least disturbed); a run during which other
    processes used more than ``--max-contention`` cores does not count, and is redone (up to
    ``--retries`` extra runs)."""
    runs, clean = [], 0
    for attempt in range(max(1, args.repeats) + max(0, args.retries)):
        if args.quiet_wait > 0:
            wait_quiet(args.quiet_wait)
        r = _spawn_once(args, case, lib)
        runs.append(r)
        if "error" in r:
            break
        print(f"[bench]   {case}/{lib} run {attempt + 1}: {r.get('seconds', float('nan')):.3f} s, "
              f"others used {r['others_cores']:.2f} cores meanwhile", flush=True)
        clean += r["others_cores"] <= args.max_contention
        if clean >= max(1, args.repeats):
            break
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    quiet = [r for r in ok if r["others_cores"] <= args.max_contention] or ok
    best = dict(min(quiet, key=lambda r: r.get("seconds", float("inf"))))
    best["runs"] = len(runs)
    best["all_seconds"] = [r.get("seconds") for r in ok]
    best["all_others_cores"] = [round(r["others_cores"], 2) for r in ok]
    return best


def engine_version() -> str:
    """git HEAD of the repository, whether tracin_core/ has uncommitted edits, and a hash of its sources."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((REPO / "tracin_core").glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", "tracin_core"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        head, dirty = "?", ""
    return f"git {head}{' + uncommitted edits in tracin_core/' if dirty else ''}, tracin_core/*.py sha256 {h.hexdigest()[:12]}"


def _fmt(v, spec=".2f", dash="—"):
    if v is None:
        return dash
    if isinstance(v, str):
        return v
    return format(v, spec)


def agreement(args, results) -> dict:
    import torch

    agree = {}

    def load(case, lib):
        r = results.get((case, lib))
        if not r or "error" in r:  # only results of runs this report holds
            return None
        p = _out_file(args, case, lib)
        return torch.load(p, weights_only=True) if p.exists() else None

    c, o = load("fast_pair", "captum"), load("fast_pair", "ours")
    if (c and o and "error" not in results.get(("fast_pair", "captum"), {})
            and "error" not in results.get(("fast_pair", "ours"), {})):
        agree["fast_pair"] = {
            "prop_scores_max_rel": max_rel_diff(o["prop_scores"], c["prop_scores"]),
            "opp_scores_max_rel": max_rel_diff(o["opp_scores"], c["opp_scores"]),
            "prop_idx_same": float((o["prop_idx"] == c["prop_idx"]).double().mean()),
            "opp_idx_same": float((o["opp_idx"] == c["opp_idx"]).double().mean()),
        }
    o = load("fast_pair", "ours")
    for lib in VARIANTS:
        v = load("fast_pair", lib)
        if o and v:
            agree[f"fast_pair_{lib}"] = {"bitwise_equal": all(torch.equal(o[k], v[k]) for k in o),
                                         "max_rel": max(max_rel_diff(v[k], o[k]) for k in ("prop_scores", "opp_scores"))}
    for case in ("fast_self", "cp_self"):
        c, o = load(case, "captum"), load(case, "ours")
        if c and o and "error" not in results.get((case, "captum"), {}) and "error" not in results.get((case, "ours"), {}):
            agree[case] = {"max_rel": max_rel_diff(o["self"], c["self"]),
                           "max_elem_rel": max_elem_rel_diff(o["self"], c["self"])}
    c, o = load("randproj_init", "captum"), load("randproj_init", "ours")
    if c and o:
        agree["randproj_exact_ref"] = {"idx_same": float((c["exact_idx"] == o["exact_idx"]).double().mean()),
                                       "scores_max_rel": max_rel_diff(o["exact_scores"], c["exact_scores"])}
    return agree


def build_report(args, results, agree, meta) -> tuple[str, list[tuple[str, bool, str]]]:
    R = lambda case, lib: results.get((case, lib), {})  # noqa: E731
    rows = []
    hdr = ("| call | Captum (s) | tracin_core (s) | ratio Captum/ours | peak MB Captum | peak MB ours "
           "| ours / forward floor | recall@10 Captum | recall@10 ours | agreement (max rel diff) |")
    sep = "|" + "---|" * 10
    floor = R("floor", "ours")  # Captum's way of decoding and running (not a floor for tracin_core)
    floor_s = floor.get("seconds")
    fwd = R("forward_floor", "ours")  # the floor that bounds tracin_core: forwards only
    fwd_s = fwd.get("seconds")

    def ratio(c, o):
        return c / o if (c is not None and o) else None

    def err(d):
        if "error" in d:
            return f"ERROR: {d['error'][:60]}"
        if d.get("others_cores", 0) > args.max_contention and d.get("seconds") is not None:
            return f"{d['seconds']:.2f} ⚠"
        return None

    def timed(c, o, vs_floor=True):
        """The cells Captum s | ours s | ratio | peak MB Captum | peak MB ours | ours / forward floor."""
        return (f"| {err(c) or _fmt(c.get('seconds'))} | {err(o) or _fmt(o.get('seconds'))} "
                f"| {_fmt(ratio(c.get('seconds'), o.get('seconds')), '.1f')}× | {_fmt(c.get('peak_mb'), '.0f')} "
                f"| {_fmt(o.get('peak_mb'), '.0f')} | {_fmt(ratio(o.get('seconds'), fwd_s)) if vs_floor else '—'} ")

    # Captum's way of decoding and running (no library call: plain torchvision + torch)
    rows.append(f"| Captum-style decode + forward: {args.n_train:,} images decoded one at a time (torchvision "
                f"DataLoader, batch {FAST_BATCH}) + 6 forwards/batch, no_grad (not a floor for tracin_core, "
                f"which decodes a batch at a time) "
                f"| — | {err(floor) or _fmt(floor_s)} | — | — | {_fmt(floor.get('peak_mb'), '.0f')} "
                f"| {_fmt(ratio(floor_s, fwd_s))} | — | — "
                f"| decode alone {_fmt(floor.get('decode_s'))} s; {_fmt(floor.get('minflt'), ',')} page faults |")
    nc = R("floor", "nochurn")
    nc_s = nc.get("seconds")
    if nc:
        rows.append(f"| Captum-style decode + forward, glibc never returning memory (MALLOC_MMAP/TRIM_THRESHOLD_=4 GiB: "
                    f"no page-fault churn) "
                    f"| — | {err(nc) or _fmt(nc_s)} | — | — | {_fmt(nc.get('peak_mb'), '.0f')} "
                    f"| {_fmt(ratio(nc_s, fwd_s))} | — | — "
                    f"| decode alone {_fmt(nc.get('decode_s'))} s; {_fmt(nc.get('minflt'), ',')} page faults |")
    if fwd:
        rows.append(f"| forward floor (bounds tracin_core): 6 no_grad forwards per batch of "
                    f"{fwd.get('batch', FAST_BATCH)} over "
                    f"{args.n_train:,} images decoded before timing ({fwd.get('layout', '?')} layout, the faster) "
                    f"| — | {err(fwd) or _fmt(fwd_s)} | — | — | {_fmt(fwd.get('peak_mb'), '.0f')} | 1.00 | — | — "
                    f"| NCHW {_fmt(fwd.get('nchw_s'))} s, channels-last {_fmt(fwd.get('channels_last_s'))} s; "
                    f"decoding (untimed) {_fmt(fwd.get('decode_s'))} s |")
    c, o = R("fast_pair", "captum"), R("fast_pair", "ours")
    a = agree.get("fast_pair")
    ag = (f"prop {a['prop_scores_max_rel']:.1e}, opp {a['opp_scores_max_rel']:.1e}; same idx "
          f"{a['prop_idx_same']:.0%}/{a['opp_idx_same']:.0%}") if a else "—"
    rows.append(f"| fast_pair: TracInCPFast(bs {FAST_BATCH}) init + top-{K} proponents + opponents, 4 test images "
                + timed(c, o) + f"| — | — | {ag} |")
    for lib, (_env, what) in VARIANTS.items():
        v, av = R("fast_pair", lib), agree.get(f"fast_pair_{lib}")
        ag_v = ("—" if not av else "scores and indices bitwise equal to the `ours` row's" if av["bitwise_equal"]
                else f"vs the `ours` row: max rel diff {av['max_rel']:.1e}")
        if v:
            rows.append(f"| fast_pair, {what} " + timed(c, v) + f"| — | — | {ag_v} |")
    rows.append(f"| fast_interactive: same pair, 4 new test images, same instance (median of {INTERACTIVE_REPEATS}, **ms**) "
                f"| — | {_fmt(o.get('interactive_ms'), '.1f')} ms | — | — | — | — | — | — "
                f"| all: {', '.join(f'{x:.1f}' for x in o.get('interactive_all_ms', []))} |")
    rows.append(f"| self_influence() of all {args.n_train:,} after that, same instance (**ms**) | — "
                f"| {_fmt(o.get('self_after_ms'), '.1f')} ms | — | — | {_fmt(o.get('peak_after_interactive_mb'), '.0f')} "
                f"| — | — | — | — |")
    def self_agree(case):
        a = agree.get(case)
        return f"| {('%.1e (elementwise %.1e)' % (a['max_rel'], a['max_elem_rel'])) if a else '—'} |"

    c, o = R("fast_self", "captum"), R("fast_self", "ours")
    rows.append(f"| fast_self: fresh TracInCPFast(bs {FAST_BATCH}) init + self_influence() "
                + timed(c, o) + "| — | — " + self_agree("fast_self"))
    c, o = R("randproj_init", "captum"), R("randproj_init", "ours")
    a = agree.get("randproj_exact_ref")
    ag_rp = (f"not vs Captum: tracin_core vs itself (its exact TracInCPFast reference in the Captum and the "
             f"ours subprocess): same idx {a['idx_same']:.0%}, scores {a['scores_max_rel']:.1e}"
             if a else "—")
    rows.append(f"| randproj_init: TracInCPFastRandProj(bs {RANDPROJ_BATCH}, Annoy 100 trees, projection_dim 100) "
                "construction " + timed(c, o) +
                f"| {_fmt(c.get('recall'))} | {_fmt(o.get('recall'))} | {ag_rp} |")
    def ms_cell(d):
        if d.get("query_s") is None:
            return "—"
        warn = " ⚠" if d.get("others_cores", 0) > args.max_contention else ""
        return f"{d['query_s'] * 1e3:.1f} ms{warn}"

    rows.append(f"| randproj query: top-{K} proponents + opponents, 4 test images (**ms**) "
                f"| {ms_cell(c)} | {ms_cell(o)} "
                f"| {_fmt(ratio(c.get('query_s'), o.get('query_s')), '.1f')}× | — | — | — | — | — | — |")
    c, o = R("cp_self", "captum"), R("cp_self", "ours")
    rows.append(f"| cp_self: TracInCP(all layers, bs {CP_BATCH}, sample_wise_grads_per_batch) init + self_influence() "
                f"of {args.cp_n:,} " + timed(c, o, vs_floor=False) + "| — | — " + self_agree("cp_self"))
    present = {c for (c, _l) in results}
    prefix_case = [("| Captum-style", "floor"), ("| forward floor", "forward_floor"), ("| fast_pair", "fast_pair"),
                   ("| fast_interactive", "fast_pair"), ("| self_influence()", "fast_pair"), ("| fast_self", "fast_self"),
                   ("| randproj", "randproj_init"), ("| cp_self", "cp_self")]
    rows = [r for r in rows if next((c for pfx, c in prefix_case if r.startswith(pfx)), None) in present]
    table = "\n".join([hdr, sep] + rows)

    # ---------------------------------------------------------------- targets
    checks: list[tuple[str, bool, str]] = []

    def contended(*pairs):
        hit = [f"{c}/{lib} {R(c, lib)['others_cores']:.2f}" for c, lib in pairs
               if R(c, lib).get("others_cores", 0) > args.max_contention]
        return f" [UNRELIABLE: other processes used CPU cores meanwhile: {', '.join(hit)}]" if hit else ""

    def add(name, ok, detail):
        checks.append((name, bool(ok), detail))

    c, o = R("fast_pair", "captum"), R("fast_pair", "ours")
    if c.get("seconds") and o.get("seconds"):
        r = c["seconds"] / o["seconds"]
        add("fast_pair ≥ 4× faster than Captum", r >= 4,
            f"{r:.3f}×" + contended(("fast_pair", "captum"), ("fast_pair", "ours")))
    if o.get("seconds") and floor_s:
        r = o["seconds"] / floor_s
        add("fast_pair ≤ 1.25× Captum-style decode + forward", r <= 1.25,
            f"{r:.2f}× Captum-style decode + forward" + contended(("fast_pair", "ours"), ("floor", "ours")))
    if o.get("seconds") and nc_s:
        r = o["seconds"] / nc_s
        add("(stricter) fast_pair ≤ 1.25× the no-churn Captum-style decode + forward", r <= 1.25,
            f"{r:.2f}× no-churn Captum-style decode + forward" + contended(("fast_pair", "ours"), ("floor", "nochurn")))
    if o.get("interactive_ms") is not None:
        add("interactive pair ≤ 50 ms", o["interactive_ms"] <= 50,
            f"{o['interactive_ms']:.1f} ms" + contended(("fast_pair", "ours")))
    if o.get("self_after_ms") is not None:
        add("self-influence after ≤ 100 ms", o["self_after_ms"] <= 100,
            f"{o['self_after_ms']:.1f} ms" + contended(("fast_pair", "ours")))
    c, o = R("randproj_init", "captum"), R("randproj_init", "ours")
    if c.get("seconds") and o.get("seconds"):
        r = c["seconds"] / o["seconds"]
        add("randproj init ≥ 3× faster than Captum", r >= 3,
            f"{r:.3f}×" + contended(("randproj_init", "captum"), ("randproj_init", "ours")))
    if c.get("recall") is not None and o.get("recall") is not None:
        add("randproj recall ≥ Captum's", o["recall"] >= c["recall"], f"{o['recall']:.2f} vs {c['recall']:.2f}")
    c, o = R("cp_self", "captum"), R("cp_self", "ours")
    if c.get("seconds") and o.get("seconds"):
        r = c["seconds"] / o["seconds"]
        add("cp_self ≥ 3× faster than Captum", r >= 3,
            f"{r:.3f}×" + contended(("cp_self", "captum"), ("cp_self", "ours")))
    for case in ("fast_pair", "fast_self", "randproj_init", "cp_self"):
        c, o = R(case, "captum"), R(case, "ours")
        if c.get("peak_mb") and o.get("peak_mb"):
            add(f"peak memory ours ≤ Captum's ({case})", o["peak_mb"] <= c["peak_mb"],
                f"{o['peak_mb']:.0f} vs {c['peak_mb']:.0f} MB")
    for case, key, tol in (("fast_pair", "prop_scores_max_rel", 1e-4), ("fast_pair", "opp_scores_max_rel", 1e-4),
                           ("fast_self", "max_rel", 1e-4), ("cp_self", "max_rel", 1e-4)):
        a = agree.get(case)
        if a:
            add(f"agreement with Captum: {case} {key} ≤ {tol:g}", a[key] <= tol, f"{a[key]:.1e}")

    lines = [
        f"# Captum {meta['captum']} vs tracin_core — CIFAR-10 tutorial settings",
        "",
        f"Command: `{meta['command']}`  ",
        *([f"Report: rebuilt from `{Path(args.out).with_suffix('.json').name}` (the measurements of that "
           f"command) by `python benchmarks/vs_captum.py --report-only --out {args.out_display}` on "
           f"{time.strftime('%Y-%m-%d %H:%M')}; only the labels changed.  "] if args.report_only else []),
        f"Engine: {meta.get('engine', '?')}  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; torch {meta['torch']} "
        f"(CPU, {meta['threads']} threads, default), torchvision {meta['torchvision']}, Python {meta['python']}.  ",
        f"Data: {args.n_train:,} train / {args.n_test_pool:,} test random images in CIFAR-10's python format "
        f"(written by `{meta['writer']}`), read by torchvision `CIFAR10` (md5 checks off) with "
        f"ToTensor + Normalize((0.5,)*3, (0.5,)*3); tracin_core decodes it a batch at a time "
        "(`tracin_core.engine.batching`: the same tensors, bitwise), Captum one image at a time; the `itemwise` "
        "row is tracin_core with that switched off. tracin_core runs the convolutions in channels-last layout "
        "(verified on the first batch, `tracin_core.engine.featurize.ChannelsLast`); the `nchw` row switches that off.  ",
        f"Model: TutorialCifarNet (the tutorial's `Net`), 6 checkpoints, {meta['ckpt_how']}. "
        "final_fc_layer = `net.fc3` (the tutorial's `list(net.children())[-1]` is relu4 for this Net). "
        "loss_fn = CrossEntropyLoss(reduction='sum'); loader: the tutorial's "
        "`load_state_dict(torch.load(path)['model_state_dict'])`, learning rate 1.0.  ",
        f"Each (case, library) runs {getattr(args, 'repeats', 1)} times, each in a fresh subprocess, and the "
        "fastest run is kept (the same rule for both libraries); seconds are wall-clock of the first call, "
        "everything included (construction, passes over the data, index building); peak MB is that "
        "process's max RSS (it includes the decoded-once dataset arrays and the imports: baseline before "
        f"the timed work: Captum ≈ {_fmt(meta.get('base_captum'), '.0f')} MB, tracin_core ≈ "
        f"{_fmt(meta.get('base_ours'), '.0f')} MB). "
        "The machine is shared: before each run the driver waits for other processes to go quiet, and "
        "redoes a run that other processes disturbed (used more than "
        f"{args.max_contention} cores during it); ⚠ marks a kept run that was still contended "
        "(its time is not reliable). See 'Runs' below.",
        "",
        table,
        "",
        "## Targets",
        "",
    ]
    details = ["", "## Runs", "",
               "Wall seconds of every run (fastest kept), CPU seconds of the kept run (all threads), and "
               "how many cores *other* processes on the machine used meanwhile (reruns happen above "
               f"{args.max_contention} cores).", "",
               "| case | library | runs: wall s | kept: CPU s | kept: system s | kept: page faults "
               "| others' cores per run | base MB |",
               "|---|---|---|---|---|---|---|---|"]
    for (case, lib), r in results.items():
        if "error" in r:
            details.append(f"| {case} | {lib} | ERROR: {r['error'][:80]} | | | | | |")
            continue
        details.append(f"| {case} | {lib} | {', '.join(f'{x:.2f}' for x in r.get('all_seconds', []))} "
                       f"| {_fmt(r.get('cpu_s'))} | {_fmt(r.get('sys_s'))} | {_fmt(r.get('minflt'), ',')} "
                       f"| {', '.join(f'{x:.2f}' for x in r.get('all_others_cores', []))} "
                       f"| {_fmt(r.get('base_mb'), '.0f')} |")
    for name, ok, detail in checks:
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {name} — {detail}")
    lines += details
    return "\n".join(lines) + "\n", checks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=50000)
    ap.add_argument("--n-test-pool", type=int, default=1000)
    ap.add_argument("--cp-n", type=int, default=5000)
    ap.add_argument("--work", default=str(HERE / "_work"))
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated subset of {CASES} (fast_interactive runs with fast_pair)")
    ap.add_argument("--out", default=str(HERE / "results" / "vs_captum.md"))
    ap.add_argument("--libs", default="captum,ours," + ",".join(VARIANTS),
                    help="subset of captum,ours,itemwise,nchw (itemwise: tracin_core with TRACIN_BATCH_DECODE=0; "
                         "nchw: with TRACIN_CHANNELS_LAST=0; both fast_pair only)")
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="before each case, wait up to this many seconds for other processes to go quiet")
    ap.add_argument("--max-contention", type=float, default=0.25,
                    help="rerun a case when other processes used more cores than this during it")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per (case, library), each in a fresh process; the fastest is kept (default 3)")
    ap.add_argument("--retries", type=int, default=2, help="extra runs allowed per case under contention")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild the markdown report from the --out .json without running anything")
    ap.add_argument("--merge", action="store_true",
                    help="start from the results in the --out .json of an earlier run with the same sizes and "
                         "replace only the cases run now (to rerun cases that were contended)")
    # internal: one case in this process
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--lib", choices=["captum", "ours", "nochurn", *VARIANTS], help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-root", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work = str(Path(args.work).resolve())

    if args.case:
        res = run_case(args)
        print(RESULT_TAG + json.dumps(res), flush=True)
        return 0

    args.out_display = os.path.relpath(args.out, REPO) if Path(args.out).is_absolute() else args.out
    if args.report_only:
        raw = Path(args.out).with_suffix(".json")
        old = json.loads(raw.read_text())
        results = {tuple(k.split("/")): r for k, r in old["results"].items()}
        report, checks = build_report(args, results, old["agreement"], old["meta"])
        print(report)
        Path(args.out).write_text(report)
        return 0 if all(ok for _, ok, _ in checks) else 1

    import torch
    import torchvision
    import captum

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    for c in (s.strip() for s in args.cases.split(",") if s.strip()):
        c = "fast_pair" if c == "fast_interactive" else c
        if c not in CASES:
            ap.error(f"--cases: unknown case {c!r}; choose from {CASES + ['fast_interactive']}")
        if c not in cases:
            cases.append(c)
    libs = [x.strip() for x in args.libs.split(",") if x.strip()]
    t0 = time.perf_counter()
    engine_at_start = engine_version()
    root, writer = ensure_cifar_folder(work, args.n_train, args.n_test_pool)
    _paths, how = ensure_checkpoints(root)
    args.data_root = str(root)
    print(f"[bench] data {root} ({writer}); checkpoints: {how}; setup {time.perf_counter() - t0:.1f} s", flush=True)

    results: dict = {}
    prev_command = None
    raw = Path(args.out).with_suffix(".json")
    if args.merge and raw.exists():
        old = json.loads(raw.read_text())
        same = old.get("meta", {}).get("sizes") == [args.n_train, args.n_test_pool, args.cp_n]
        if same:
            for key, r in old.get("results", {}).items():
                c, lib = key.split("/")
                results[(c, lib)] = r
            print(f"[bench] merging into {len(results)} earlier results from {raw}", flush=True)
            prev_command = old["meta"].get("command")
        else:
            print(f"[bench] --merge: {raw} holds other sizes; starting afresh", flush=True)
    for case in cases:
        for lib in LIBS[case]:
            if lib not in libs and case not in ("floor", "forward_floor"):
                continue
            print(f"[bench] {case} / {lib} ...", flush=True)
            r = spawn(args, case, lib)
            results[(case, lib)] = r
            short = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                     if k not in ("case", "lib", "interactive_all_ms")}
            print(f"[bench]   {short}", flush=True)

    agree = agreement(args, results)
    cmd = "python benchmarks/vs_captum.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if prev_command:
        cmd = f"{prev_command}`, then `{cmd.strip()}"
    bases_c = [r["base_mb"] for (c, lib), r in results.items() if lib == "captum" and "base_mb" in r]
    bases_o = [r["base_mb"] for (c, lib), r in results.items() if lib == "ours" and "base_mb" in r
               and c not in ("floor", "forward_floor")]
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except Exception:  # noqa: BLE001  (no /proc/cpuinfo or no model line: fall back to platform)
        model_name = platform.processor() or platform.machine()
    engine_now = engine_version()
    if engine_now.split("sha256 ")[-1] != engine_at_start.split("sha256 ")[-1]:
        engine_now = f"CHANGED DURING THE RUN: {engine_at_start} at the start, {engine_now} at the end"
    elif engine_now != engine_at_start:
        engine_now = f"{engine_now} (sources unchanged during the run; at the start: {engine_at_start})"
    meta = dict(engine=engine_now, captum=captum.__version__, torch=torch.__version__, torchvision=torchvision.__version__,
                python=platform.python_version(), threads=torch.get_num_threads(),
                machine=f"{model_name}, {os.cpu_count()} logical CPUs", date=time.strftime("%Y-%m-%d %H:%M"),
                command=cmd.strip(), writer=writer, ckpt_how=how, sizes=[args.n_train, args.n_test_pool, args.cp_n],
                base_captum=max(bases_c) if bases_c else None, base_ours=max(bases_o) if bases_o else None)
    report, checks = build_report(args, results, agree, meta)
    print()
    print(report)
    print("agreement:", json.dumps(agree, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    raw.write_text(json.dumps({"meta": meta, "agreement": agree,
                               "results": {f"{c}/{lib}": r for (c, lib), r in results.items()}}, indent=1))
    print(f"[bench] wrote {out} and {raw}; total {time.perf_counter() - t0:.0f} s", flush=True)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
