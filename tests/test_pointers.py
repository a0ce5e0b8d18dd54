"""Comments and docstrings that point somewhere point at something in the repository (issue 23)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _sources():
    return sorted((ROOT / "core").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))


def test_no_pointer_to_a_file_or_section_that_does_not_exist():
    """METRICS.md is not in the repository and docs/metrics.md has no numbered sections: a comment
    names docs/metrics.md and the title of its section."""
    bad = [f"{path.relative_to(ROOT)}:{n}" for path in _sources()
           for n, line in enumerate(path.read_text().splitlines(), 1) if "METRICS.md" in line or "§" in line]
    assert not bad, bad


def test_every_quoted_section_of_docs_metrics_exists():
    titles = "\n".join(line for line in (ROOT / "docs" / "metrics.md").read_text().splitlines() if line.startswith("#"))
    for path in _sources():
        for quoted in re.findall(r'docs/metrics\.md, "([^"]+)"', path.read_text()):
            quoted = " ".join(quoted.replace("#", " ").split())  # a title wrapped over two lines
            assert quoted in titles, f"{path.relative_to(ROOT)}: no section {quoted!r} in docs/metrics.md"
