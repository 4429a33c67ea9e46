"""Every section citation in the repository points at a file the repository holds, and at a section that file has.

Comments, docstrings and documents cite the project's own notes as ``docs/cmi.md`` or ``docs/baselines.md``
followed by a section sign and a section number (several numbers may follow: ``, `` lists them, ``-`` gives a
range). Inside a Markdown document a section sign without a file name refers to that document's own sections.
Anywhere else a section sign that does not follow a file name, a cited file that does not exist, or a section
number that is not one of the file's numbered headings fails the test, as does any mention of the internal notes
the code used to cite (they are not part of the repository). The section sign is written as an escape in this
file so that the test does not cite anything itself.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT as ROOT

SECTION_SIGN = "\u00a7"
SCANNED = (
    "recbole_cmi",
    "properties",
    "docs",
    "tests",
    "results",
    "benchmarks",
    "scripts",
    "README.md",
    "ARCHITECTURE.md",
    "run_recbole_cmi.py",
    "run_hyper.py",
)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".hyper", ".sh", ".cfg", ".toml", ".txt"}
NUMBER = r"\d+(?:\.\d+)*"
REFERENCE = re.escape(SECTION_SIGN) + NUMBER
# "docs/cmi.md <sign>1.2", "docs/cmi.md <sign>3.2, <sign>4.1", "docs/baselines.md <sign>1.1-<sign>1.4", and in
# Markdown "[notes](notes.md) <sign>2.1" (the file name then ends with the link's closing parenthesis).
CITATION = re.compile(rf"(?P<file>[\w./-]+\.md)\)?[ \t]+(?P<refs>{REFERENCE}(?:(?:, | and |-|–){REFERENCE})*)")
HEADING = re.compile(rf"^#{{1,6}}[ \t]+(?P<number>{NUMBER})\.?[ \t]", re.M)
# Notes that were never part of the repository; the two kept in docs/ must be cited with their folder.
FORBIDDEN = re.compile(r"(?<![\w/.])" + "anchors" + r"\.md")
UNQUALIFIED = re.compile(r"(?<![\w/.])(?:cmi|baselines)\.md")


def scanned_files(root: Path) -> list[Path]:
    files = []
    for name in SCANNED:
        path = root / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return files


@functools.cache
def _sections(path: Path) -> frozenset[str]:
    return frozenset(match["number"] for match in HEADING.finditer(path.read_text(encoding="utf-8")))


def _resolve(name: str, source: Path, root: Path) -> Path | None:
    """The cited file: relative to the repository root, or (Markdown links) to the citing file's folder."""
    for base in (root, source.parent):
        candidate = (base / name).resolve()
        if candidate.is_file() and candidate.is_relative_to(root.resolve()):
            return candidate
    return None


def citation_problems(text: str, source: Path, root: Path = ROOT) -> list[str]:
    """One line per bad citation in ``text`` (the contents of ``source``); empty when all are good."""
    problems = []
    covered = set()

    def line_of(index: int) -> int:
        return text.count("\n", 0, index) + 1

    for match in CITATION.finditer(text):
        covered.update(range(match.start("refs"), match.end("refs")))
        cited = _resolve(match["file"], source, root)
        where = f"{source.relative_to(root)}:{line_of(match.start())}"
        if cited is None:
            problems.append(f"{where}: cites {match['file']}, which the repository does not contain")
            continue
        for number in re.findall(NUMBER, match["refs"].replace(SECTION_SIGN, " ")):
            if number not in _sections(cited):
                problems.append(f"{where}: cites {match['file']} {SECTION_SIGN}{number}, which it has no heading for")
    own_sections = _sections(source) if source.suffix == ".md" and source.is_file() else None
    for match in re.finditer(re.escape(SECTION_SIGN) + f"(?P<number>{NUMBER})?", text):
        if match.start() in covered:
            continue
        where = f"{source.relative_to(root)}:{line_of(match.start())}"
        if own_sections is None or match["number"] is None:
            problems.append(f"{where}: a section sign without the file it cites")
        elif match["number"] not in own_sections:
            problems.append(f"{where}: {match.group()} is not a section of this document")
    for pattern, why in ((FORBIDDEN, "an internal note that is not in the repository"), (UNQUALIFIED, None)):
        if pattern is UNQUALIFIED and source.resolve().parent == (root / "docs").resolve():
            continue  # inside docs/ a sibling's bare name is a correct relative link
        for match in pattern.finditer(text):
            reason = why or "write it with its folder, docs/"
            problems.append(f"{source.relative_to(root)}:{line_of(match.start())}: {match.group()} ({reason})")
    return problems


def test_every_section_citation_in_the_repository_resolves():
    problems = []
    for path in scanned_files(ROOT):
        problems += citation_problems(path.read_text(encoding="utf-8"), path)
    assert not problems, "\n".join(problems)


def test_the_cited_documents_exist_and_the_readme_links_them():
    for name in ("docs/cmi.md", "docs/baselines.md", "ARCHITECTURE.md"):
        assert (ROOT / name).is_file(), name
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for link in ("(ARCHITECTURE.md)", "(docs/cmi.md)", "(docs/baselines.md)"):
        assert link in readme, f"README.md does not link {link}"


@pytest.fixture
def tiny_repo(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text(
        "# Notes\n\n## 1. One\n\n### 1.2 Detail\n\n## 2. Two\n\n### 2.10 Later\n", encoding="utf-8"
    )
    (tmp_path / "pkg").mkdir()
    return tmp_path


S = SECTION_SIGN


@pytest.mark.parametrize(
    "text",
    [
        f"see docs/notes.md {S}1.2.",
        f"(docs/notes.md {S}1, {S}2.10)",
        f"docs/notes.md {S}1.2-{S}2",
        f"``docs/notes.md {S}2``",
        "no citation at all",
    ],
)
def test_good_citations_pass(tiny_repo, text):
    assert citation_problems(text, tiny_repo / "pkg" / "mod.py", tiny_repo) == []


def test_a_markdown_link_resolves_next_to_the_citing_file(tiny_repo):
    source = tiny_repo / "docs" / "other.md"
    assert citation_problems(f"[notes](notes.md) {S}1.2", source, tiny_repo) == []
    assert citation_problems(f"[notes](notes.md) {S}1.2", tiny_repo / "pkg" / "mod.py", tiny_repo) != []


@pytest.mark.parametrize(
    ("text", "expected", "line"),
    [
        (f"see docs/missing.md {S}1", "does not contain", 1),
        (f"see docs/notes.md {S}3", f"{S}3, which it has no heading", 1),
        (f"see docs/notes.md {S}1.2, {S}2.1", f"{S}2.1, which it has no heading", 1),
        (f"docs/notes.md {S}1-{S}4", f"{S}4, which it has no heading", 1),
        (f"as shown above ({S}1.2)", "without the file", 1),
        (f"docs/notes.md\n{S}1.2", "without the file", 2),
        ("the " + "anchors" + ".md notes", "not in the repository", 1),
        ("first line\nsee " + "cmi" + ".md for the maths", "with its folder", 2),
    ],
)
def test_bad_citations_are_reported_with_their_line(tiny_repo, text, expected, line):
    problems = citation_problems(text, tiny_repo / "pkg" / "mod.py", tiny_repo)
    assert len(problems) == 1 and expected in problems[0], problems
    assert problems[0].startswith(f"pkg/mod.py:{line}: ")


def test_a_markdown_document_may_name_its_own_sections_without_its_file(tiny_repo):
    notes = tiny_repo / "docs" / "notes.md"
    assert citation_problems(f"as {S}2.10 says", notes, tiny_repo) == []
    problems = citation_problems(f"as {S}5 says", notes, tiny_repo)
    assert len(problems) == 1 and "not a section of this document" in problems[0], problems
