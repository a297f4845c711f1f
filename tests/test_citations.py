"""The package cites what ships or is public: specs, tickets, README sections.

Its users cannot read the project's own planning documents, so no module, template
or script of ``mpai/`` may send them there (a document name, "the seed", "issue 8").
A ticket of a public project is cited with its project (``django-redis issue #155``).
The load test's default corpus path (``<BASE_DIR>/../shared/data/conversations.jsonl``)
is a file location, not a citation, and is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path

import mpai

PACKAGE = Path(mpai.__file__).parent
UNSHIPPED = re.compile(
    r"CONTRACTS\.md|ARCHITECTURE\.md|\.\./shared(?!/data/conversations\.jsonl)|\bseeds?\b"
    r"|(?<!#)\bissue \d+",
    re.IGNORECASE,
)
SUFFIXES = {".py", ".html", ".js", ".css", ".txt"}


def _citations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in SUFFIXES or "vendor" in path.parts:
            continue
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if UNSHIPPED.search(line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    return found


def test_the_pattern_finds_what_it_forbids() -> None:
    assert UNSHIPPED.search("as pinned in CONTRACTS.md")
    assert UNSHIPPED.search("the seed's categories")
    assert UNSHIPPED.search("(issue 8)")
    assert not UNSHIPPED.search("django-redis issue #155")
    assert UNSHIPPED.search("see ../shared/ARCHITECTURE notes")
    assert not UNSHIPPED.search("<BASE_DIR>/../shared/data/conversations.jsonl")


def test_package_code_cites_no_unshipped_document() -> None:
    assert _citations() == []
