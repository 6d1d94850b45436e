"""README's "stated (tested)" figures are the figures the tests assert.

Every README table with a ``stated (tested)`` column names, in the paragraph
before it, the test file that asserts it. That file holds the figures in a
module-level ``STATED`` dict (its assertions read them from there). Per row:
a row whose first cell names a scene (``\\`cornell\\```) that is a key of
``STATED`` must state exactly that entry's numbers; the column as a whole
must state exactly the numbers of ``STATED`` (every figure a test asserts
is stated, and nothing is stated that no test asserts).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
HEADER = "stated (tested)"


def numbers(text: str) -> set[float]:
    """The numbers written in ``text`` (units and words ignored)."""
    return {float(m) for m in NUMBER.findall(text.replace("`", " "))}


def flat_numbers(value) -> set[float]:
    if isinstance(value, dict):
        return set().union(*(flat_numbers(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(flat_numbers(v) for v in value)) if value else set()
    return {float(value)}


def stated_tables(text: str) -> list[dict]:
    """Each README table with a "stated (tested)" column: the test file named
    before it, and its rows (first cell, stated cell)."""
    lines = text.splitlines()
    tables = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or HEADER not in line:
            continue
        header = [c.strip() for c in line.strip("|").split("|")]
        column = header.index(HEADER)
        before = "\n".join(lines[max(0, i - 12):i])
        named = re.findall(r"tests/(test_\w+\.py)", before)
        rows = []
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip("|").split("|")]
            rows.append((cells[0], cells[column]))
        tables.append({"line": i + 1, "test": named[-1] if named else None, "rows": rows})
    return tables


def load_stated(test_file: str) -> dict:
    path = ROOT / "tests" / test_file
    spec = importlib.util.spec_from_file_location(f"_readme_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "STATED"), f"{test_file} has no STATED dict of its asserted figures"
    return module.STATED


TABLES = stated_tables((ROOT / "README.md").read_text())


def test_readme_has_stated_tables():
    assert len(TABLES) >= 4
    for table in TABLES:
        assert table["test"], f"README.md:{table['line']}: no tests/test_*.py named before " \
                              "this table of tested figures"


@pytest.mark.parametrize("table", TABLES, ids=lambda t: f"line{t['line']}")
def test_stated_figures_are_the_asserted_ones(table):
    stated = load_stated(table["test"])
    where = f"README.md:{table['line']} ({table['test']})"
    column = set()
    for first, cell in table["rows"]:
        found = numbers(cell)
        column |= found
        scene = re.fullmatch(r"`(\w+)`", first)
        if scene and scene.group(1) in stated:
            assert found == flat_numbers(stated[scene.group(1)]), \
                f"{where}: row {first}: README states {sorted(found)}, the test asserts " \
                f"{sorted(flat_numbers(stated[scene.group(1)]))}"
    assert column == flat_numbers(stated), \
        f"{where}: README states {sorted(column)}, the test asserts {sorted(flat_numbers(stated))}"


def test_the_check_catches_a_disagreement(tmp_path):
    text = ("Asserted by `tests/test_recovery.py`:\n\n| scene | stated (tested) |\n|---|---|\n"
            "| `cornell` | < 0.02 each |\n")
    (table,) = stated_tables(text)
    stated = load_stated(table["test"])
    first, cell = table["rows"][0]
    assert numbers(cell) != flat_numbers(stated["cornell"])
