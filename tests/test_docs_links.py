"""The documentation holds together: README.md is short (at most 250 lines) and names the three commands CI runs
(`.ci/run`: the set-up command, then the test command); every relative link in README.md and docs/*.md reaches a
file, and an `#anchor` a heading of it (GitHub's slug rule); every docs/ page is linked from the README and links
back to it. Reads text only: well under a second."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 250
COMMANDS = ("make setup", ".venv/bin/clipbench run --all", "make test")

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]+(?:\([^()\s]*\)[^()\s>]*)*)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fence = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fence = not fence
            continue
        if not fence:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading renders as its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeats numbered as GitHub numbers them (`x`, `x-1`, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[str]:
    """The link and image targets of a markdown file's prose (code blocks and code spans are not links)."""
    out = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        out += LINK.findall(CODE_SPAN.sub("", line))
    return out


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("//")


def test_the_readme_is_short_and_names_the_three_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES, f"README.md has {len(text.splitlines())} lines"
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md needs a bash block with its set-up, main and test commands"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in COMMANDS if c in lines] == list(COMMANDS), lines
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "make setup" in ci and "make test" in ci, "CI runs the README's set-up and test commands"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in filter(relative, links(page)):
        path, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme_and_back():
    assert DOCS, "docs/ holds the documentation pages"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in filter(relative, links(README))}
    assert [p.name for p in DOCS if p.resolve() not in linked] == [], "docs pages the README does not link"
    back = [p.name for p in DOCS if not any(t.partition("#")[0] == "../README.md" for t in links(p))]
    assert back == [], "docs pages without a link back to ../README.md"


def test_the_slug_rule():
    assert slug("Recipes: shared, or each method's own") == "recipes-shared-or-each-methods-own"
    assert slug("The offline `mini` suite (the default)") == "the-offline-mini-suite-the-default"
    assert slug("Real scale: the decoded-image store and GPU feeding") == "real-scale-the-decoded-image-store-and-gpu-feeding"
    assert slug("`clipbench leaderboard --html`") == "clipbench-leaderboard---html"
    assert links(README) and all(isinstance(t, str) for t in links(README))
