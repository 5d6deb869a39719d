"""Every measured figure in the README comes from a committed results file.

A "figure" here is a decimal number with a unit (``5.45×``, ``0.468 s``, ``12.9 ms``,
``1268 MB``, ``95.0%``): each must appear, as written, in a file under
``benchmarks/results/`` that the script which measured it wrote.
"""
from __future__ import annotations

import re

from tests.conftest import REPO

FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*\.\d+)\s?(?:×|x\b|s\b|ms\b|MB\b|%)")


def test_readme_figures_are_in_committed_results():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    results = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                        for p in sorted((REPO / "benchmarks" / "results").iterdir())
                        if p.suffix in (".md", ".json"))
    figures = [(readme[:m.start()].count("\n") + 1, m.group(0), m.group(1)) for m in FIGURE.finditer(readme)]
    assert len(figures) > 20  # the speed, quality and load tables are there
    missing = [(line, text) for line, text, number in figures if number not in results]
    assert not missing, f"README figures with no committed results line: {missing}"
