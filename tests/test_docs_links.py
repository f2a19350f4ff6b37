"""Every pointer into the docs leads somewhere: a markdown link to a file of the repository
(and its #anchor to a heading there), and a section named in prose ('README, *What
edgeexit guarantees*', 'docs/design.md, "Layers"') to a heading of that file. A renamed
heading left a newcomer looking for a README section that no longer existed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [*MARKDOWN, *sorted((ROOT / "edgeexit").rglob("*.py"))]

CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # fenced blocks and inline code
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
# a file, then the section in quotes or italics: README, *Title*; design.md's "Title"
SECTION = re.compile(
    r"\b(README(?:\.md)?|(?:docs/)?[\w-]+\.md)(?:'s)?,? (?:section )?"
    r"(?:\"([^\"\n]+)\"|\*([^*\n]+)\*)"
)


def headings(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [m[1].strip() for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def named_file(name: str, where: Path) -> Path:
    if name.startswith("README"):
        return ROOT / "README.md"
    name = name.removeprefix("docs/")
    return next((p for p in (where.parent / name, ROOT / "docs" / name) if p.is_file()),
                ROOT / "docs" / name)  # fmt: skip


def links() -> list[tuple[str, str]]:
    found = []
    for path in MARKDOWN:
        for target in LINK.findall(CODE.sub("", path.read_text())):
            if not re.match(r"[a-z]+:", target):  # http:, mailto:
                found.append((path.relative_to(ROOT).as_posix(), target))
    return found


def sections() -> list[tuple[str, str, str]]:
    found = []
    for path in SOURCES:
        text = " ".join(path.read_text().split())  # a reference may wrap across lines
        for name, quoted, italic in SECTION.findall(text):
            found.append((path.relative_to(ROOT).as_posix(), name, quoted or italic))
    return found


@pytest.mark.parametrize(("source", "target"), links())
def test_a_markdown_link_leads_to_a_file_and_heading(source, target):
    file, _, anchor = target.partition("#")
    path = (ROOT / source).parent / file if file else ROOT / source
    assert path.exists(), f"{source} links to {target}: no such file"
    if anchor:
        assert anchor in {slug(h) for h in headings(path)}, f"{source}: no heading #{anchor}"


@pytest.mark.parametrize(("source", "name", "title"), sections())
def test_a_section_named_in_prose_is_a_heading_of_that_file(source, name, title):
    path = named_file(name, ROOT / source)
    assert path.is_file(), f"{source} names {name}, which does not exist"
    # a heading starts with the title, numbered or not ('1. The multi-exit model (torch side)')
    titles = [re.sub(r"^\d+\.\s*", "", h).lower() for h in headings(path)]
    assert any(t.startswith(title.lower()) for t in titles), (
        f"{source} points to {name}, {title!r}: no such heading ({'; '.join(headings(path))})"
    )


def test_both_kinds_of_pointer_are_found():
    # the checks above must have something to check: the patterns still match the docs
    assert len(sections()) >= 5 and any(name.startswith("README") for _, name, _ in sections())
    assert slug("What edgeexit guarantees") == "what-edgeexit-guarantees"
    assert slug("Verdicts: `edgeexit bench`") == "verdicts-edgeexit-bench"
