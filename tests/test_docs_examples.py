"""Every ```python block of README.md and docs/ runs, against the servers the tests start.

The blocks of one page run in order in one namespace (a fresh module), so a
page reads like a tutorial; ``<!-- prelude: ... -->`` adds hidden set-up code
before a block and ``<!-- no-run: reason -->`` shows a block without running
it (see ``tests/docs_examples/collect.py``). A page that mentions
``REDIS_URL``, ``REDIS_CLUSTER_NODES``, ``MEMCACHED_SERVERS`` or
``MEMCACHED_POOL_SERVERS`` gets that server (flushed) as a variable and in
the environment; every page runs in a temporary working directory.
"""

from __future__ import annotations

import gc
import ipaddress
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cacheorm as co
from tests.docs_examples.collect import (
    ROOT,
    SERVER_NAMES,
    Block,
    MarkerError,
    Page,
    collect,
    parse,
    summary,
)

PAGES = collect()

#: Set-up for pages whose text other sessions own (a page-wide prelude, run
#: before the first block), so their examples run without hidden markers.
PAGE_PRELUDES = {
    "docs/security.md": """
import dataclasses
from typing import Annotated
import cacheorm as co

@dataclasses.dataclass
class User:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str

backend = co.MemoryBackend()
import os
os.environ.setdefault("CACHE_SIGNING_KEY", "00" * 32)
""",
}

#: The fixture that gives (and flushes) each server.
_FIXTURES = {
    "REDIS_URL": "redis_backend",
    "REDIS_CLUSTER_NODES": "redis_cluster_backend",
    "MEMCACHED_SERVERS": "memcached_backend",
    "MEMCACHED_POOL_SERVERS": "memcached_pool_backend",
}


class _Summary:
    """Prints the run / no-run counts at the end of a test session."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("-", "code examples in README.md and docs/")
        for line in summary(PAGES).splitlines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def _print_counts(request: pytest.FixtureRequest) -> None:
    """Register the summary once per session, when these tests run."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("cacheorm-docs-examples"):
        manager.register(_Summary(), "cacheorm-docs-examples")


def _server_address(request: pytest.FixtureRequest, name: str) -> str:
    """The address of the server ``name`` stands for, flushed by its fixture."""
    request.getfixturevalue(_FIXTURES[name])
    if name == "REDIS_URL":
        return str(request.getfixturevalue("redis_server").url)
    if name == "REDIS_CLUSTER_NODES":
        return ",".join(request.getfixturevalue("redis_cluster").startup_nodes)
    if name == "MEMCACHED_SERVERS":
        return ",".join(request.getfixturevalue("memcached_server").servers)
    return ",".join(request.getfixturevalue("memcached_pool").servers)


def _run(code: str, filename: str, line: int, namespace: dict[str, Any]) -> None:
    """Run ``code`` as if it started at ``line`` of ``filename`` (so tracebacks point there)."""
    exec(compile("\n" * (line - 1) + code, filename, "exec"), namespace)


def _close_everything(namespace: dict[str, Any]) -> None:
    """Close the backends a page left open, so no socket is left to the garbage collector."""
    for value in list(namespace.values()):
        if isinstance(value, co.Repository):
            value = value.backend
        if isinstance(value, co.Backend) and not isinstance(value, type):
            value.close()


def run_page(
    page: Page, namespace: dict[str, Any], page_prelude: str = "", root: Path = ROOT
) -> None:
    """Run the page's blocks in order in ``namespace``, each after its prelude."""
    if page_prelude:
        _run(page_prelude, f"<page prelude of {page.path}>", 1, namespace)
    for block in page.blocks:
        if not block.runs:
            continue
        if block.prelude:
            _run(block.prelude, str(root / block.page), block.prelude_line, namespace)
        line = block.line if block.source == block.page else 1
        _run(block.code, str(root / block.source), line, namespace)


@pytest.fixture
def page_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A fresh module, registered in sys.modules, in a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    name = f"cacheorm_docs_page_{abs(hash(tmp_path))}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        yield module
    finally:
        try:
            _close_everything(vars(module))
        finally:
            del sys.modules[name]
            vars(module).clear()
            gc.collect()


@pytest.mark.parametrize("page", [p for p in PAGES if p.run], ids=lambda p: p.path)
def test_page_examples_run(
    page: Page,
    page_module: types.ModuleType,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every block of the page not marked no-run runs, in order, without an exception."""
    namespace = vars(page_module)
    for name in SERVER_NAMES:
        if page.mentions(name) or name in PAGE_PRELUDES.get(page.path, ""):
            address = _server_address(request, name)
            monkeypatch.setenv(name, address)
            namespace[name] = address
        else:
            # Never the developer's own servers: an example that needs one must say so.
            monkeypatch.delenv(name, raising=False)
    run_page(page, namespace, PAGE_PRELUDES.get(page.path, ""))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.path)
def test_every_block_compiles(page: Page) -> None:
    """Blocks marked no-run are still valid Python (and so are the preludes)."""
    for block in page.blocks:
        compile(block.code, f"{block.page}:{block.line}", "exec")
        if block.prelude:
            compile(block.prelude, f"{block.page}:{block.prelude_line}", "exec")


def test_user_facing_pages_run_every_block() -> None:
    """Quickstart, models, keys, every backend page and the DI page: no block is left unrun."""
    by_path = {page.path: page for page in PAGES}
    required = [
        "README.md",
        "docs/quickstart.md",
        "docs/models.md",
        "docs/keys.md",
        "docs/backends/index.md",
        "docs/backends/memory.md",
        "docs/backends/filesystem.md",
        "docs/backends/redis.md",
        "docs/backends/memcached.md",
        "docs/dependency-injection.md",
    ]
    for path in required:
        assert path in by_path, f"{path} is missing"
        assert by_path[path].user_facing
        assert by_path[path].run > 0, f"{path} has no runnable example"
    unrun = {page.path: page.not_run for page in PAGES if page.user_facing and page.not_run}
    assert unrun == {}, f"user-facing pages with blocks that do not run: {unrun}"


_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")
_URL_HOST = re.compile(
    r"\b(?!https?:)[a-z][a-z0-9+.-]*://(?:[^/@\s\"']*@)?(\[[^\]]+\]|[A-Za-z0-9][^/:?#\s\"'`]*)"
)
#: "host:port" strings; a host has a dot (or is localhost), which tells it from a key like "user:1".
_HOST_PORT = re.compile(r"[\"']([A-Za-z][A-Za-z0-9-]*\.[A-Za-z0-9.-]+|localhost):\d{2,5}[\"',]")
_LOOPBACK_NAMES = {"localhost"}
#: Hosts that cannot exist: fine in a no-run block, never in one that runs.
_FAKE_SUFFIXES = (".example.internal", ".invalid", ".example")
#: Placeholders in prose (``redis://host:port/db``).
_PLACEHOLDERS = {"host"}


def _hosts(text: str) -> list[str]:
    return [
        *_IPV4.findall(text),
        *(host.strip("[]") for host in _URL_HOST.findall(text)),
        *_HOST_PORT.findall(text),
    ]


def _loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.mark.parametrize("path", [p.path for p in PAGES])
def test_no_page_names_a_real_address(path: str) -> None:
    """Pages name only loopback or fake (``*.example.internal``) hosts; http(s) links aside."""
    text = (ROOT / path).read_text(encoding="utf-8")
    for host in _hosts(text):
        fake = host.lower().endswith(_FAKE_SUFFIXES) or host.lower() in _PLACEHOLDERS
        assert _loopback(host) or fake, f"{path} names the address {host!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.path)
def test_blocks_that_name_a_fake_host_do_not_run(page: Page) -> None:
    """A block that names a remote (fake) host is marked no-run, so nothing ever connects out."""
    for block in page.blocks:
        remote = [host for host in _hosts(block.code + block.prelude) if not _loopback(host)]
        assert not (remote and block.runs), (
            f"{page.path}:{block.line} runs and names {remote}; mark it <!-- no-run: ... -->"
        )


# -- the collector itself -------------------------------------------------------


def _page(tmp_path: Path, text: str) -> Page:
    (tmp_path / "docs").mkdir(exist_ok=True)
    path = tmp_path / "docs" / "page.md"
    path.write_text(text, encoding="utf-8")
    return parse(path, tmp_path)


def test_collector_reads_blocks_preludes_and_markers(tmp_path: Path) -> None:
    """Blocks keep their order and lines; preludes and no-run reasons attach to the next block."""
    page = _page(
        tmp_path,
        "# Title\n"
        "```python\nx = 1\n```\n"
        "<!-- prelude:\ny = 2\n-->\n\n"
        "```python\nassert x + y == 3\n```\n"
        "```bash\necho not python\n```\n"
        "<!-- no-run: talks to a fake host -->\n"
        "    ```py\n    raise SystemExit\n    ```\n",
    )
    assert [(b.line, b.code, b.runs) for b in page.blocks] == [
        (3, "x = 1\n", True),
        (10, "assert x + y == 3\n", True),
        (17, "raise SystemExit\n", False),
    ]
    assert page.blocks[1].prelude == "y = 2\n"
    assert page.blocks[1].prelude_line == 6
    assert page.blocks[2].no_run == "talks to a fake host"
    assert (page.run, page.not_run) == (2, 1)
    namespace: dict[str, Any] = {}
    run_page(page, namespace, root=tmp_path)
    assert namespace["y"] == 2


def test_collector_expands_snippets(tmp_path: Path) -> None:
    """A block made of one snippet line runs that file and names it in tracebacks."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "example.py").write_text("VALUE = 42\n", encoding="utf-8")
    page = _page(tmp_path, '```python\n--8<-- "docs/example.py"\n```\n')
    assert page.blocks[0].code == "VALUE = 42\n"
    assert page.blocks[0].source == "docs/example.py"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- no-run: -->\n```python\nx\n```\n", "needs a reason"),
        ("<!-- no-run: why -->\ntext\n```python\nx\n```\n", "right before"),
        ("<!-- no-run: why -->\n```bash\nx\n```\n", "followed by a bash block"),
        ("<!-- prelude: x = 1\n```python\nx\n```\n", "never closed"),
        ("<!-- skip -->\n```python\nx\n```\n", "unknown or malformed"),
        ("<!-- no-run: why -->\n", "end of the page"),
        ('```python\n--8<-- "docs/missing.py"\n```\n', "does not exist"),
    ],
)
def test_collector_refuses_misplaced_markers(tmp_path: Path, text: str, message: str) -> None:
    """A marker that would silently not apply is an error naming the page and line."""
    with pytest.raises(MarkerError, match=message):
        _page(tmp_path, text)


def test_a_failing_block_fails_with_its_page_and_line(tmp_path: Path) -> None:
    """An example that raises fails the page, with a traceback at the Markdown line."""
    page = _page(tmp_path, "text\n\n```python\nx = 1\nassert x == 2\n```\n")
    with pytest.raises(AssertionError) as info:
        run_page(page, {}, root=tmp_path)
    frame = info.traceback[-1]
    assert (frame.path, frame.lineno + 1) == (tmp_path / "docs" / "page.md", 5)


def test_address_checks_tell_loopback_from_remote() -> None:
    """The address scan finds IPs, URL hosts and host:port strings, and knows loopback."""
    found = _hosts('a 10.0.0.1 b "redis://:pw@cache.example.internal:6379/0" c "db.local:5432"')
    assert found == ["10.0.0.1", "cache.example.internal", "db.local"]
    assert _loopback("127.0.0.1")
    assert _loopback("::1")
    assert _loopback("localhost")
    assert not _loopback("10.0.0.1")
    assert not _loopback("cache.example.internal")


def test_summary_counts_run_and_no_run_blocks() -> None:
    """The printed table lists every page with its counts and a total."""
    text = summary(PAGES)
    assert "README.md" in text
    assert text.splitlines()[-1].startswith("total")
    assert sum(page.run for page in PAGES) > 0
    assert isinstance(PAGES[0].blocks[0], Block)


def test_main_fails_when_a_user_facing_page_has_an_unrun_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m tests.docs_examples.collect`` prints the table and exits 1 on an unrun block."""
    from tests.docs_examples import collect as collector

    quickstart = Page("docs/quickstart.md", (Block("docs/quickstart.md", 3, "x\n", no_run="why"),))
    design = Page("docs/design.md", (Block("docs/design.md", 3, "x\n", no_run="why"),))
    monkeypatch.setattr(collector, "collect", lambda: [quickstart, design])
    assert collector.main() == 1
    out, err = capsys.readouterr()
    assert "docs/quickstart.md    0       1  (must be 0)" in out
    assert "docs/quickstart.md" in err
    monkeypatch.setattr(collector, "collect", lambda: [design])
    assert collector.main() == 0
