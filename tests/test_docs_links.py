"""The README and docs/*.md hold together: every relative link names a file that exists and
every ``#anchor`` a heading of the file it points to (GitHub's slugs) or an explicit
``<a id>``; the README stays the front door (short, the two commands, a way to every doc).

Markdown is read with markdown-it-py (it comes with rich), so links in code blocks and code
spans are not links, and links in tables are.
"""

from __future__ import annotations

import re
import urllib.parse
from collections import Counter
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
MARKDOWN = MarkdownIt("commonmark").enable("table")
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:|//")
_EXPLICIT_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lowercase, punctuation removed, spaces to
    hyphens (github-slugger)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _tokens(path: Path) -> list[Token]:
    return MARKDOWN.parse(path.read_text(encoding="utf-8"))


def _text(inline: Token) -> str:
    """The text a heading renders (code spans' content kept, markup and HTML dropped)."""
    parts = []
    for child in inline.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file: its headings' slugs (a repeated one gets -1, -2, ...)
    and its explicit ``<a id="...">``."""
    tokens = _tokens(path)
    seen: Counter[str] = Counter()
    found = set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            base = slug(_text(tokens[i + 1]))
            found.add(f"{base}-{seen[base]}" if seen[base] else base)
            seen[base] += 1
        for html in [token, *(token.children or [])]:
            if html.type in ("html_inline", "html_block"):
                found.update(_EXPLICIT_ANCHOR.findall(html.content))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image of a Markdown file."""
    out = []
    for token in _tokens(path):
        line = token.map[0] + 1 if token.map else 0
        for child in token.children or []:
            target = child.attrGet("href") if child.type == "link_open" else None
            if child.type == "image":
                target = child.attrGet("src")
            if isinstance(target, str):
                out.append((line, target))
    return out


def broken(path: Path, root: Path = REPO) -> list[str]:
    """The relative links of ``path`` that name no file under ``root``, or no anchor of the
    Markdown file they name."""
    problems = []
    for line, target in links(path):
        if _SCHEME.match(target):
            continue  # a web address: not ours to check offline
        file_part, _, anchor = target.partition("#")
        named = (path.parent / urllib.parse.unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{line}: {target}"
        if not named.is_relative_to(root) or not named.exists():
            problems.append(f"{where}: no such file")
        elif anchor and named.suffix == ".md" and anchor not in anchors(named):
            problems.append(f"{where}: no heading or <a id> {anchor!r} in {named.name}")
    return problems


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_every_relative_link_and_anchor_between_the_readme_and_the_docs_resolves() -> None:
    problems = [p for doc in documents() for p in broken(doc)]
    assert not problems, "\n".join(problems)


def test_slugs_follow_githubs_rules() -> None:
    assert slug("`dnc status`: the first questions, in tables") == (
        "dnc-status-the-first-questions-in-tables"
    )
    assert slug("Sizing on paper: 10,000 seats") == "sizing-on-paper-10000-seats"
    assert slug("How it works, and why it is safe") == "how-it-works-and-why-it-is-safe"
    assert slug("May I call this number now?") == "may-i-call-this-number-now"
    assert slug('Attempts: reserved at dial time, recorded before "go"') == (
        "attempts-reserved-at-dial-time-recorded-before-go"
    )
    assert slug("Time zones  and  DNC_VIEW_KEY") == "time-zones--and--dnc_view_key"


def test_a_broken_link_or_anchor_is_caught(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ops.md").write_text(
        '# Ops\n\n## Backups\n\n## Backups\n\n- <a id="fencing"></a>**Fencing**\n'
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Front\n\n## The `make up` tour\n\n"
        "[ok](docs/ops.md) [ok](docs/ops.md#backups) [ok](docs/ops.md#backups-1)\n"
        "[ok](docs/ops.md#fencing) [ok](#the-make-up-tour) [web](https://example.org/#x)\n"
        "| a | b |\n|---|---|\n| [in a table](docs/gone.md) | x |\n\n"
        "[anchor](docs/ops.md#backups-2) [self](#tour) ![img](docs/ops.png)\n\n"
        "`[not a link](docs/nowhere.md)`\n\n```\n[nor this](docs/nowhere.md)\n```\n"
    )
    assert broken(readme, tmp_path) == [
        "README.md:9: docs/gone.md: no such file",
        "README.md:11: docs/ops.md#backups-2: no heading or <a id> 'backups-2' in ops.md",
        "README.md:11: #tour: no heading or <a id> 'tour' in README.md",
        "README.md:11: docs/ops.png: no such file",
    ]


def test_the_readme_is_a_front_door_to_every_doc() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README)}
    assert not [d.name for d in sorted(DOCS.glob("*.md")) if d.resolve() not in linked]
    # The two commands, as the Makefile has them, and CI runs the README's test command.
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^up: setup\n", makefile, re.M)
    assert re.search(r"^test: setup\n", makefile, re.M)
    assert "`make up`" in text and "`make test`" in text
    assert (REPO / ".ci" / "run").read_text().rstrip().endswith("\nmake test")
