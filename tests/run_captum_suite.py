"""Run Captum's own TracIn tests with ``tracin_core``'s classes in place of Captum's.

Needs captum (requirements-bench.txt), ``parameterized`` and a checkout of
https://github.com/pytorch/captum (a work tree, or a bare git dir read at HEAD). Copies
``tests/influence/_core/test_tracin_*.py`` into a temporary folder with a conftest that
replaces ``TracInCP``, ``TracInCPFast`` and ``TracInCPFastRandProj`` in Captum's modules
(and in its test helpers) by ``tracin_core``'s, then runs pytest there:

    python tests/run_captum_suite.py /path/to/captum [-- extra pytest args]

(Not collected by pytest: the file name does not start with ``test_``. The behaviour these
files check is ported to small data in ``tests/test_captum_suite.py``.)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = "tests/influence/_core"

CONFTEST = f'''
import sys
sys.path.insert(0, {ROOT!r})
import captum.influence as ci
import captum.influence._core.tracincp as t1
import captum.influence._core.tracincp_fast_rand_proj as t2
import captum.testing.helpers.influence.common as hc
import tracin_core
for mod in (ci, t1, t2, hc):
    for name in ("TracInCP", "TracInCPFast", "TracInCPFastRandProj"):
        if hasattr(mod, name):
            setattr(mod, name, getattr(tracin_core, name))
'''


def _files(checkout: str) -> dict[str, str]:
    """{file name: text} of Captum's TracIn test files."""
    if os.path.isdir(os.path.join(checkout, FOLDER)):
        folder = os.path.join(checkout, FOLDER)
        return {f: open(os.path.join(folder, f)).read() for f in sorted(os.listdir(folder))
                if f.startswith("test_tracin") and f.endswith(".py")}
    git = ["git", "--git-dir", checkout]
    names = subprocess.run(git + ["ls-tree", "--name-only", f"HEAD:{FOLDER}"], check=True,
                           capture_output=True, text=True).stdout.split()
    return {f: subprocess.run(git + ["show", f"HEAD:{FOLDER}/{f}"], check=True, capture_output=True,
                              text=True).stdout
            for f in names if f.startswith("test_tracin") and f.endswith(".py")}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    files = _files(argv[0])
    if not files:
        print(f"{argv[0]}: no {FOLDER}/test_tracin_*.py found")
        return 2
    extra = argv[2:] if len(argv) > 1 and argv[1] == "--" else argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w") as fh:
                fh.write(text)
        with open(os.path.join(tmp, "conftest.py"), "w") as fh:
            fh.write(CONFTEST)
        return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                "--rootdir", tmp, tmp, *extra], cwd=tmp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
