"""glibc's allocator set up for passes of large CPU batches (tracin_core.engine.allocator):
freed per-batch activations are reused, not mapped and zeroed again (counted as page faults)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = """
import json, resource, torch
from tracin_core.engine.allocator import keep_freed_batches
on = keep_freed_batches()
# one thread: each extra intra-op thread has its own malloc arena to warm up, and how many
# there are depends on the machine (CI's 8+ threads faulted 12,500 tuned against 6,300 here)
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(  # a small CNN's forward at batch 512: activations of 3-26 MB
    torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)).eval()
x = torch.randn(512, 1, 28, 28)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.no_grad():
    net(x)
    before = faults()
    for _ in range(10):
        net(x)
print(json.dumps({"on": on, "faults": faults() - before}))
"""


def _probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_batches_are_reused_instead_of_faulted_in_again():
    tuned = _probe()
    # glibc's defaults sometimes keep a freed buffer too (48,539 faults once in six probes
    # on a new machine, against 153,000-186,000 the other five): the most of three probes
    defaults = [_probe(TRACIN_MALLOC_TUNING="0") for _ in range(3)]
    default = max(defaults, key=lambda d: d["faults"])
    assert tuned["on"] is True and all(d["on"] is False for d in defaults)
    # glibc's defaults map and zero about 60 MB of fresh pages per forward (90,000 to 190,000
    # page faults for 10 forwards on one thread, measured run to run); tuned, the freed
    # activations are reused: 1,600 to 12,545 faults (in steps of one 12 MB buffer faulted in
    # again, 0 to 4 times in 10 forwards). A tenth was too tight for the two ends to meet
    # (12,545 against 90,036 failed once in a full run); a fifth still says "mostly reused".
    assert default["faults"] > 50_000
    assert tuned["faults"] < default["faults"] / 5


def test_switch_off_leaves_the_allocator_alone(monkeypatch):
    from tracin_core.engine import allocator

    monkeypatch.setattr(allocator, "_DONE", [])
    monkeypatch.setenv("TRACIN_MALLOC_TUNING", "off")
    assert allocator.keep_freed_batches() is False
    assert allocator._DONE == []  # not decided: a later call with the switch on may still set it


ARENAS = """
import ctypes, sys, threading
from tracin_core.engine.allocator import keep_freed_batches
on = keep_freed_batches()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def work():  # a thread started after the setting, as a pass's decode-ahead thread is
    p = libc.malloc(1 << 20)
    libc.free(p)
threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
sys.stderr.flush()
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_threads_share_one_arena():
    # one arena per thread made a pass's peak memory depend on which thread freed what
    def arenas(**env: str) -> int:
        out = subprocess.run([sys.executable, "-c", ARENAS], cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO), **env})
        assert out.returncode == 0, out.stderr
        return sum(line.startswith("Arena ") for line in out.stderr.splitlines())

    assert arenas() == 1
    assert arenas(TRACIN_MALLOC_TUNING="0") > 1  # glibc's default: the threads got arenas of their own
