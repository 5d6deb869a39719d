"""The package layout: the engine (``tracin_core.engine``) never reaches the audit backend
(``tracin_core.audit``), and the public names stay importable from ``tracin_core``."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tracin_core

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "tracin_core" / "engine"


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = "tracin_core.engine"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def test_engine_sources_import_nothing_from_the_audit_part():
    files = sorted(ENGINE.glob("*.py"))
    assert len(files) >= 10
    bad = {f.name: sorted(m for m in _imported_modules(f)
                          if m.startswith("tracin_core.") and not m.startswith("tracin_core.engine"))
           for f in files}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_importing_every_engine_module_loads_no_audit_module():
    modules = [f"tracin_core.engine.{f.stem}" for f in sorted(ENGINE.glob("*.py")) if f.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('tracin_core.audit')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_names_resolve_from_the_top_package():
    for name in tracin_core.__all__:
        value = getattr(tracin_core, name)
        assert value.__module__.startswith(("tracin_core.engine.", "tracin_core.audit.")), (name, value.__module__)
    assert tracin_core.TracInCP.__module__ == "tracin_core.engine.tracin"
    assert tracin_core.Workspace.__module__ == "tracin_core.audit.workspace"
