"""Stages read each other's public entry points, never their internals (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import effvit_deploy

PACKAGE = Path(effvit_deploy.__file__).parent


def _export_imports(module: Path) -> list[str]:
    """Every import in `module` that names something under effvit_deploy.export."""
    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            absolute = name if node.level == 0 else f"effvit_deploy.{name}" if node.level == 2 else name
            if absolute.startswith("effvit_deploy.export"):
                found.append(absolute)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("effvit_deploy.export")]
    return found


def test_bench_imports_only_the_public_entry_points_of_export():
    modules = sorted((PACKAGE / "bench").glob("*.py"))
    assert modules
    private = {str(m.relative_to(PACKAGE)): names for m in modules
               if (names := [n for n in _export_imports(m) if n != "effvit_deploy.export"])}
    assert not private, f"bench/ reaches into export/ internals: {private}"


def test_the_boundary_check_sees_a_private_import(tmp_path):
    """The control: a module importing export's internals is caught."""
    module = tmp_path / "m.py"
    module.write_text("from ..export.onnx import export_onnx\nfrom ..export import export_run\n")
    assert _export_imports(module) == ["effvit_deploy.export.onnx", "effvit_deploy.export"]
