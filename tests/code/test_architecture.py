"""docs/ARCHITECTURE.md names every module of the package, and no module grows long without saying why.

The document's convention: a module is named by its path from the repository root in backticks
(`` `kosent/sweep/trial.py` ``), a package by its folder with a trailing slash (`` `kosent/sweep/` ``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kosent"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
MAX_LINES = 600
REASON = re.compile(r"(?:^|[.!?:]\s+|\n\s*)Longer than 600 lines because\b")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def doc_name(path: Path) -> str:
    """How the document names ``path``: ``kosent/sweep/trial.py``, or ``kosent/sweep/`` for a package."""
    rel = path.relative_to(ROOT)
    if rel.name == "__init__.py":
        return f"{rel.parent.as_posix()}/"
    return rel.as_posix()


def test_every_module_is_named_in_the_architecture_document():
    text = DOC.read_text(encoding="utf-8")
    names = [doc_name(p) for p in _modules()]
    assert "kosent/sweep/trial.py" in names and "kosent/sweep/" in names  # the walk sees nested packages
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, (
        f"docs/ARCHITECTURE.md does not name these modules (write each as `kosent/.../name.py`, a package "
        f"as `kosent/.../`, with one line on its job): {', '.join(missing)}"
    )


def test_the_architecture_document_names_no_module_that_is_gone():
    text = DOC.read_text(encoding="utf-8")
    named = set(re.findall(r"`(kosent/[\w/]*?(?:\.py|/))`", text))
    existing = {doc_name(p) for p in _modules()}
    gone = sorted(named - existing)
    assert not gone, f"docs/ARCHITECTURE.md names modules that do not exist: {', '.join(gone)}"


def test_long_modules_say_why_at_their_top():
    long_ones = []
    for path in _modules():
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines <= MAX_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(source), clean=True) or ""
        if not REASON.search(docstring):
            long_ones.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not long_ones, (
        f"modules longer than {MAX_LINES} lines whose module docstring has no sentence starting "
        f"'Longer than {MAX_LINES} lines because': {', '.join(long_ones)} (split the module, or write the reason)"
    )
