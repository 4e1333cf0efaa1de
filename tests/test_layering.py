"""Dependency direction: papers import common (never each other); common/ and results/ never import papers."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_common_and_results_do_not_import_papers():
    for folder in ("common", "results"):
        for path in (ROOT / folder).rglob("*.py"):
            bad = [m for m in imported_modules(path) if m == "papers" or m.startswith("papers.")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_papers_do_not_import_each_other():
    papers = ROOT / "papers"
    for pkg in (p for p in papers.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        for path in pkg.rglob("*.py"):
            for m in imported_modules(path):
                parts = m.split(".")
                if parts[0] == "papers" and len(parts) > 1:
                    assert parts[1] == pkg.name, f"{path.relative_to(ROOT)} imports {m}"
