"""Find the ```python blocks of README.md and docs/**/*.md, with their markers.

Every ```python block is run by ``tests/test_docs_examples.py``: the blocks of
one page in order, in one namespace, so a page reads (and runs) like a
tutorial. Two HTML comments, invisible on GitHub and on the site, sit right
before a block (blank lines may come between):

``<!-- prelude: ... -->``
    Hidden set-up code run just before the block, for instance a model the
    page defined earlier in prose. It may span several lines up to ``-->``.
``<!-- no-run: reason -->``
    The block is shown but not run; the reason is required. The summary
    counts these per page, and the user-facing pages (:data:`USER_FACING`)
    must have none.

A line ``--8<-- "docs/examples/x.py"`` inside a block (pymdownx.snippets, which
the site uses to show a file) is replaced by that file, so an example module
shown on a page is run from the page too. Such a block is opened with
``{.python title="..."}`` rather than ``python``: ruff formats ```python blocks
in Markdown and would rewrite the ``--8<--`` line as Python.

The names in :data:`SERVER_NAMES` (and environment variables of the same
names) hold the addresses of the servers the test suite starts; a page that
mentions one gets it. ``python -m tests.docs_examples.collect`` prints the
counts and fails if a user-facing page has a block that does not run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
import textwrap
from pathlib import Path

__all__ = [
    "ROOT",
    "SERVER_NAMES",
    "USER_FACING",
    "Block",
    "MarkerError",
    "Page",
    "collect",
    "markdown_files",
    "parse",
    "summary",
]

#: The repository root.
ROOT = Path(__file__).resolve().parents[2]

#: Pages whose examples must all run (glob patterns, relative to the root).
USER_FACING = (
    "README.md",
    "docs/index.md",
    "docs/quickstart.md",
    "docs/models.md",
    "docs/keys.md",
    "docs/backends/*.md",
    "docs/dependency-injection.md",
)

#: Names a block may use for the test servers' addresses (also set in the environment).
SERVER_NAMES = ("REDIS_URL", "REDIS_CLUSTER_NODES", "MEMCACHED_SERVERS", "MEMCACHED_POOL_SERVERS")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_NO_RUN = re.compile(r"^\s*<!--\s*no-run:(?P<reason>.*?)-->\s*$")
_PRELUDE = re.compile(r"^\s*<!--\s*prelude:(?P<rest>.*)$")
_MARKER_LIKE = re.compile(r"^\s*<!--\s*(prelude|no-run|norun|skip)\b")
_SNIPPET = re.compile(r"""^\s*-{1,}8<-{1,}\s+["'](?P<path>[^"']+)["']\s*$""")


class MarkerError(ValueError):
    """A marker that is malformed or not directly before a ```python block."""


@dataclasses.dataclass(frozen=True)
class Block:
    """One ```python block of a page.

    Attributes:
        page: the page's path, relative to the root.
        line: the 1-based line of the block's first code line.
        code: the code, dedented, with snippet lines expanded.
        prelude: hidden set-up code from a ``prelude`` marker ("" if none).
        prelude_line: the 1-based line where the prelude's code starts.
        no_run: the reason from a ``no-run`` marker, or None if the block runs.
        source: the file to name in tracebacks (the page, or the one snippet
            file that makes up the whole block).
    """

    page: str
    line: int
    code: str
    prelude: str = ""
    prelude_line: int = 0
    no_run: str | None = None
    source: str = ""

    @property
    def runs(self) -> bool:
        """Whether the test suite runs this block."""
        return self.no_run is None


@dataclasses.dataclass(frozen=True)
class Page:
    """The ```python blocks of one Markdown file, in order."""

    path: str
    blocks: tuple[Block, ...]

    @property
    def run(self) -> int:
        """How many blocks run."""
        return sum(block.runs for block in self.blocks)

    @property
    def not_run(self) -> int:
        """How many blocks are marked no-run."""
        return len(self.blocks) - self.run

    @property
    def user_facing(self) -> bool:
        """Whether every block of this page must run."""
        return any(fnmatch.fnmatch(self.path, pattern) for pattern in USER_FACING)

    def mentions(self, name: str) -> bool:
        """Whether a running block or prelude uses ``name``."""
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        return any(
            pattern.search(block.code) or pattern.search(block.prelude)
            for block in self.blocks
            if block.runs
        )


def markdown_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown file under docs/, in a stable order."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def parse(path: Path, root: Path = ROOT) -> Page:
    """The ```python blocks of the Markdown file at ``path``.

    Raises:
        MarkerError: a marker without a reason, or not followed by a python block.
    """
    name = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    prelude = ""
    prelude_line = 0
    no_run: str | None = None
    marker_at = 0  # the line of a pending marker, 0 if none
    i = 0

    def fail(line: int, why: str) -> MarkerError:
        return MarkerError(f"{name}:{line}: {why}")

    while i < len(lines):
        text = lines[i]
        fence = _FENCE.match(text)
        if fence is not None:
            indent, mark = fence["indent"], fence["fence"]
            language = _language(fence["info"])
            start = i + 1
            i += 1
            while i < len(lines):
                closing = lines[i].strip()
                if closing.startswith(mark[0] * len(mark)) and not closing.strip(mark[0]):
                    break
                i += 1
            body = [
                line[len(indent) :] if line.startswith(indent) else line for line in lines[start:i]
            ]
            i += 1
            if language in ("python", "py", "python3"):
                code, source = _expand(body, root, name, start + 1)
                blocks.append(
                    Block(
                        page=name,
                        line=start + 1,
                        code=code,
                        prelude=prelude,
                        prelude_line=prelude_line,
                        no_run=no_run,
                        source=source,
                    )
                )
            elif marker_at:
                raise fail(marker_at, f"the marker is followed by a {language or 'plain'} block")
            prelude, prelude_line, no_run, marker_at = "", 0, None, 0
            continue
        skipped = _NO_RUN.match(text)
        if skipped is not None:
            reason = skipped["reason"].strip()
            if not reason:
                raise fail(i + 1, "a no-run marker needs a reason: <!-- no-run: why -->")
            no_run, marker_at = reason, marker_at or i + 1
            i += 1
            continue
        opened = _PRELUDE.match(text)
        if opened is not None:
            first = i + 1
            rest = opened["rest"]
            body = []
            while "-->" not in rest:
                body.append(rest)
                i += 1
                if i >= len(lines):
                    raise fail(first, "a prelude marker is never closed with -->")
                rest = lines[i]
            body.append(rest[: rest.index("-->")])
            if body and not body[0].strip():
                body, prelude_line = body[1:], first + 1
            else:
                prelude_line = first
            prelude = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
            marker_at = marker_at or first
            i += 1
            continue
        if _MARKER_LIKE.match(text):
            raise fail(i + 1, f"unknown or malformed marker {text.strip()!r}")
        if marker_at and text.strip():
            raise fail(marker_at, "a marker must come right before a ```python block")
        i += 1
    if marker_at:
        raise fail(marker_at, "a marker at the end of the page, with no block after it")
    return Page(name, tuple(blocks))


def _language(info: str) -> str:
    """The language of a fence's info string: ``python``, ``py title="x"`` or ``{.python ...}``."""
    info = info.strip()
    if info.startswith("{"):
        found = re.search(r"\.([\w+-]+)", info)
        return found[1].lower() if found else ""
    return (info.split() or [""])[0].lower()


def _expand(body: list[str], root: Path, page: str, line: int) -> tuple[str, str]:
    """The block's code with snippet lines replaced by their files, and the name to show."""
    snippets = [_SNIPPET.match(text) for text in body]
    if not any(snippets):
        return "\n".join(body) + "\n", page
    out = []
    for text, snippet in zip(body, snippets, strict=True):
        if snippet is None:
            out.append(text)
            continue
        target = root / snippet["path"]
        if not target.is_file():
            raise MarkerError(f"{page}:{line}: the snippet {snippet['path']!r} does not exist")
        out.append(target.read_text(encoding="utf-8").rstrip("\n"))
    code = "\n".join(out) + "\n"
    whole = [s for s in snippets if s is not None]
    alone = len(whole) == 1 and all(
        s is not None or not t.strip() for s, t in zip(snippets, body, strict=True)
    )
    return code, whole[0]["path"] if alone else page


def collect(root: Path = ROOT) -> list[Page]:
    """Every Markdown page, parsed."""
    return [parse(path, root) for path in markdown_files(root)]


def summary(pages: list[Page]) -> str:
    """A table of the run and no-run blocks per page."""
    width = max(len(page.path) for page in pages)
    rows = [f"{'page':<{width}}  run  no-run", f"{'-' * width}  ---  ------"]
    for page in pages:
        flag = "  (must be 0)" if page.user_facing and page.not_run else ""
        rows.append(f"{page.path:<{width}}  {page.run:>3}  {page.not_run:>6}{flag}")
    run = sum(page.run for page in pages)
    not_run = sum(page.not_run for page in pages)
    rows.append(f"{'total':<{width}}  {run:>3}  {not_run:>6}")
    return "\n".join(rows)


def main() -> int:
    """Print the counts; 1 if a user-facing page has a block that does not run."""
    pages = collect()
    print("Code examples in README.md and docs/ (run by tests/test_docs_examples.py):")
    print(summary(pages))
    bad = [page.path for page in pages if page.user_facing and page.not_run]
    if bad:
        print(f"user-facing pages with blocks that do not run: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
