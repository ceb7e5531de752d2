"""The repository's documentation stands on its own: no tracked Markdown or Python file points
outside the repository, and every relative link of README.md and docs/ leads to a file that
exists. A clone is all a reader has."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

# Inline links and images: [text](target) or [text](<target>), with an optional title.
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*(?:<([^>\n]+)>|([^)\s]+))(?:\s+\"[^\"\n]*\")?\s*\)")
# Reference definitions: [label]: target
_REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:\s*<?([^\s>]+)>?", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Places outside the repository that files used to name: the design and style notes kept next
# to the checkout, and absolute paths of the machine the project was developed on.
_OUTSIDE_MENTION = re.compile(r"\.\./shared\b|\bshared/(?:ARCHITECTURE|STYLE)\.md|(?<![\w.])/work/")


def tracked_files(*patterns: str) -> list[Path]:
    """The files git tracks that match `patterns` (git pathspecs), present in the work tree."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--", *patterns],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    paths = (REPOSITORY_ROOT / name for name in listing.split("\0") if name)
    return sorted(path for path in paths if path.is_file())


def link_targets(text: str) -> Iterator[str]:
    """The targets of the Markdown links in `text`, outside code blocks and code spans."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", text))
    for match in _INLINE_LINK.finditer(prose):
        yield match.group(1) or match.group(2)
    for match in _REFERENCE.finditer(prose):
        yield match.group(1)


def local_path(source: Path, target: str, root: Path) -> Path | None:
    """Where a link of `source` leads in the file system, or None for a URL or an anchor.

    A target starting with `/` is relative to the repository root, as GitHub reads it.
    """
    if not target or target.startswith("#") or _SCHEME.match(target):
        return None
    path = unquote(target.split("#", 1)[0].split("?", 1)[0])
    if not path:
        return None
    base = root if path.startswith("/") else source.parent
    return (base / path.lstrip("/")).resolve()


def outside_references(source: Path, text: str, root: Path) -> list[str]:
    """What in `text` (the content of `source`) points outside `root`."""
    problems = [
        f"mentions {match.group(0)!r} (line {text.count(chr(10), 0, match.start()) + 1})"
        for match in _OUTSIDE_MENTION.finditer(text)
    ]
    for target in link_targets(text):
        path = local_path(source, target, root)
        if path is not None and not path.is_relative_to(root.resolve()):
            problems.append(f"links {target!r}, outside the repository")
    return problems


def broken_links(source: Path, text: str, root: Path) -> list[str]:
    """The relative links of `text` (the content of `source`) that lead to nothing."""
    return [
        target
        for target in link_targets(text)
        if (path := local_path(source, target, root)) is not None and not path.exists()
    ]


def _relative(path: Path) -> str:
    return path.relative_to(REPOSITORY_ROOT).as_posix()


def test_no_tracked_markdown_or_python_file_points_outside_the_repository() -> None:
    # This file is left out: its patterns and examples spell out what the check looks for.
    files = [p for p in tracked_files("*.md", "*.py") if p != Path(__file__).resolve()]
    assert files, "git ls-files listed no Markdown or Python file"
    problems = {
        _relative(path): found
        for path in files
        if (found := outside_references(path, path.read_text(encoding="utf-8"), REPOSITORY_ROOT))
    }
    assert problems == {}


def test_every_relative_link_of_the_readme_and_docs_leads_to_a_file() -> None:
    files = tracked_files("README.md", "docs/*.md", "docs/**/*.md")
    assert REPOSITORY_ROOT / "docs" / "architecture.md" in files
    broken = {
        _relative(path): found
        for path in files
        if (found := broken_links(path, path.read_text(encoding="utf-8"), REPOSITORY_ROOT))
    }
    assert broken == {}


def test_the_readme_links_the_design_in_docs() -> None:
    readme = REPOSITORY_ROOT / "README.md"
    targets = {
        local_path(readme, target, REPOSITORY_ROOT)
        for target in link_targets(readme.read_text(encoding="utf-8"))
    }
    assert REPOSITORY_ROOT / "docs" / "architecture.md" in targets


def test_every_page_in_docs_is_reachable_from_the_index() -> None:
    index = REPOSITORY_ROOT / "docs" / "architecture.md"
    linked = {
        local_path(index, target, REPOSITORY_ROOT)
        for target in link_targets(index.read_text(encoding="utf-8"))
    }
    pages = set(tracked_files("docs/*.md", "docs/**/*.md")) - {index}
    assert sorted(_relative(p) for p in pages - linked) == []


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("The design is in [the notes](../shared/ARCHITECTURE.md).", True),
        ("See [x](../../elsewhere/x.md).", True),
        ("See shared/STYLE.md for the habits.", True),
        ("Read /work/main/README.md first.", True),
        ("[ok](architecture.md), [anchor](#top), [up](../README.md), [root](/bench/x.md)", False),
        ("See <https://example.com/work/x> and [y](https://example.com/a/b).", False),
        ("```\n[in a code block](../../x.md)\n```\n`[in a span](../../y.md)`", False),
    ],
)
def test_outside_references_are_found(tmp_path: Path, text: str, flagged: bool) -> None:
    """The check itself, on a page in docs/: a link climbing out of the root, or a mention of
    the old places, is reported; links inside the root, URLs, anchors and code are not."""
    root = tmp_path / "repo"
    source = root / "docs" / "page.md"
    source.parent.mkdir(parents=True)
    assert bool(outside_references(source, text, root)) is flagged


def test_broken_links_are_found(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "there.md").write_text("")
    source = root / "README.md"
    text = "[a](docs/there.md#part) [b](docs/missing.md) [c](/docs/there.md) [d](https://x.y/z)"
    assert broken_links(source, text, root) == ["docs/missing.md"]
