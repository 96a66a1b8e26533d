"""Every Markdown file that the code or the docs name exists in the repository.

A reference is any path ending in `.md` in a source, config or documentation file,
resolved against the repository root or, for relative links, against the naming file's
folder. A section named after it, as `path "Section"` (a heading, or the start of one before a
colon) or as a link anchor `path#section`, must be a heading of that file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".mako"}
SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "opsd-data", "runs"}

# A path that ends in ".md": not preceded by a path character, so URLs never match.
MD_PATH = re.compile(r"(?<![\w/.-])(/?(?:[\w.-]+/)*[\w.-]+\.md)(?!\w)")
ANCHOR = re.compile(r"#([\w-]+)")
SECTION = re.compile(r',?\s*"([^"\n]+)"')
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def scanned_files() -> list[Path]:
    """Tracked and new (not ignored) files; without git, the tree minus build outputs."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        paths = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):
        paths = [
            p for p in ROOT.rglob("*") if not SKIPPED_DIRS & set(p.relative_to(ROOT).parts[:-1])
        ]
    return sorted(
        p
        for p in paths
        if p.is_file() and (p.suffix in SCANNED_SUFFIXES or p.name.startswith("Dockerfile"))
    )


def resolve(reference: str, source: Path) -> Path | None:
    """The file a reference names, inside the repository, or None."""
    if reference.startswith("/"):
        return None  # outside the repository
    for base in (ROOT, source.parent):
        target = (base / reference).resolve()
        if target.is_file() and target.is_relative_to(ROOT):
            return target
    return None


def slug(heading: str) -> str:
    """A heading's link anchor, as GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> set[str]:
    return {h.strip("` ") for h in HEADING.findall(path.read_text(encoding="utf-8"))}


def dead_references(text: str, source: Path) -> list[str]:
    """`file:line: problem` for every reference in `text` (the content of `source`) that
    leads nowhere."""
    problems = []
    for match in MD_PATH.finditer(text):
        reference = match.group(1)
        where = f"{source.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
        target = resolve(reference, source)
        if target is None:
            problems.append(f"{where}: {reference} is not a file of the repository")
            continue
        rest = text[match.end() :]
        if anchor := ANCHOR.match(rest):
            if anchor.group(1) not in {slug(h) for h in headings(target)}:
                problems.append(f"{where}: {reference} has no heading #{anchor.group(1)}")
        elif section := SECTION.match(rest):
            title = section.group(1)
            if not any(h == title or h.startswith(f"{title}:") for h in headings(target)):
                problems.append(f'{where}: {reference} has no heading "{title}"')
    return problems


def test_every_markdown_file_named_in_the_repository_exists_with_its_sections():
    files = scanned_files()
    assert ROOT / "README.md" in files and ROOT / "trainer" / "losses.py" in files
    problems = [
        problem
        for path in files
        if path != Path(__file__).resolve()  # its own examples of dead references
        for problem in dead_references(path.read_text(encoding="utf-8", errors="replace"), path)
    ]
    assert problems == [], "dead references:\n" + "\n".join(problems)


def test_missing_files_sections_and_anchors_are_reported_and_urls_ignored():
    source = ROOT / "docs" / "probe.md"  # a file in docs/; only its folder matters
    text = (
        'docs/algorithm.md "Divergences", docs/algorithm.md "No such section",\n'
        'envs/README.md, "Tool environments" and sandbox/README.md "Backends"\n'
        "docs/nothing.md, /abs/README.md, ../README.md, https://example.org/gone.md,\n"
        "[ok](architecture.md#the-walk-of-one-step) [bad](architecture.md#nope)"
    )
    assert dead_references(text, source) == [
        'docs/probe.md:1: docs/algorithm.md has no heading "No such section"',
        "docs/probe.md:3: docs/nothing.md is not a file of the repository",
        "docs/probe.md:3: /abs/README.md is not a file of the repository",
        "docs/probe.md:4: architecture.md has no heading #nope",
    ]
