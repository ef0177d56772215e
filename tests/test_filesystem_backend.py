"""Tests specific to the FileSystemBackend: persistence, layout, atomicity, locking, errors."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cacheorm._backend import Backend
from cacheorm._errors import BackendError, ConfigurationError, InvalidTTL
from cacheorm._filesystem import FileSystemBackend
from cacheorm._memory import MemoryBackend
from tests.conftest import FakeClock

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEADER_SIZE = 44


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> FileSystemBackend:
    """A FileSystemBackend on a fresh directory, timed by the fake clock."""
    return FileSystemBackend(tmp_path / "store", clock=clock)


def entry_path(store: FileSystemBackend, key: str) -> Path:
    """Where ``store`` keeps ``key``: <dir>/<first two hex digits>/<sha256 hex>."""
    name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return store.directory / name[:2] / name


def all_files(root: Path) -> list[Path]:
    """Every regular file under ``root``."""
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


def temp_files(root: Path) -> list[Path]:
    """The temporary files left under ``root``."""
    return [p for p in all_files(root) if p.name.startswith(".tmp-")]


# -- construction ---------------------------------------------------------------------


def test_is_a_backend_and_creates_its_directory(tmp_path: Path) -> None:
    """The backend satisfies the Backend protocol and creates its directory, parents too."""
    target = tmp_path / "a" / "b" / "c"
    store = FileSystemBackend(target)
    assert isinstance(store, Backend)
    assert target.is_dir()
    assert store.directory == target
    assert store.directory.is_absolute()
    assert repr(store) == f"FileSystemBackend(directory={str(target)!r}, fsync=False)"
    assert FileSystemBackend(str(target), fsync=True).fsync is True


def test_relative_directory_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative directory is resolved against the working directory at construction."""
    monkeypatch.chdir(tmp_path)
    store = FileSystemBackend("rel")
    assert store.directory == tmp_path / "rel"


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    """A non-path directory or a non-callable clock is a TypeError."""
    with pytest.raises(TypeError, match="directory must be"):
        FileSystemBackend(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock must be a callable"):
        FileSystemBackend(tmp_path, clock=5)  # type: ignore[arg-type]


def test_directory_that_is_a_file_is_a_backend_error(tmp_path: Path) -> None:
    """A directory path occupied by a regular file cannot be created: BackendError naming it."""
    occupied = tmp_path / "file"
    occupied.write_bytes(b"")
    with pytest.raises(BackendError, match="cannot create the store directory") as info:
        FileSystemBackend(occupied)
    assert info.value.server == str(occupied)
    assert isinstance(info.value.__cause__, OSError)


def test_platform_without_fcntl_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without fcntl (not POSIX) construction fails with a clear ConfigurationError."""
    import cacheorm._filesystem as module

    monkeypatch.setattr(module, "_HAVE_FCNTL", False)
    with pytest.raises(ConfigurationError, match=r"POSIX file locks \(fcntl\)"):
        FileSystemBackend(tmp_path)


# -- layout and persistence ------------------------------------------------------------


def test_file_layout_and_header(store: FileSystemBackend) -> None:
    """An entry is <dir>/<ab>/<sha256 hex> holding magic, key and the raw value."""
    store.set("user:1", b"payload")
    path = entry_path(store, "user:1")
    data = path.read_bytes()
    assert data[:4] == b"CoFS"
    assert data[HEADER_SIZE : HEADER_SIZE + 6] == b"user:1"
    assert data.endswith(b"payload")
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([".lock", path.name])


def test_persists_across_instances(tmp_path: Path) -> None:
    """A value written by one instance is read by a new instance on the same directory."""
    FileSystemBackend(tmp_path / "s").set("k", b"v", ttl=3600)
    again = FileSystemBackend(tmp_path / "s")
    assert again.get("k") == b"v"
    assert again.exists("k")


def test_persists_across_processes(tmp_path: Path) -> None:
    """A value written by another process is read here, and one written here is read there."""
    directory = str(tmp_path / "s")
    FileSystemBackend(directory).set("from-parent", b"hello")
    code = (
        "import sys\n"
        "from cacheorm._filesystem import FileSystemBackend\n"
        "b = FileSystemBackend(sys.argv[1])\n"
        "assert b.get('from-parent') == b'hello', b.get('from-parent')\n"
        "b.set('from-child', b'world')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code, directory], env=env, check=True, timeout=30)
    assert FileSystemBackend(directory).get("from-child") == b"world"


AWKWARD_KEYS = [
    "../etc/passwd",
    "../../../../../../tmp/escape",
    "a/b",
    "/abs/path",
    "nul\x00byte",
    "x" * 300,
    "é" * 200,
    "ключ/日本語/🙂",
    "",
    ".",
    "..",
    ".lock",
    "\ud800 lone surrogate",
]


def test_awkward_keys_round_trip_inside_the_directory(tmp_path: Path) -> None:
    """Keys with slashes, dots, NUL, 300+ bytes, unicode or nothing stay inside the directory."""
    root = tmp_path / "root"
    store = FileSystemBackend(root / "store")
    for i, key in enumerate(AWKWARD_KEYS):
        store.set(key, f"value {i}".encode())
    for i, key in enumerate(AWKWARD_KEYS):
        assert store.get(key) == f"value {i}".encode()
        assert entry_path(store, key).is_file()
    assert store.get_many(AWKWARD_KEYS) == [f"value {i}".encode() for i in range(len(AWKWARD_KEYS))]
    store_dir = str(store.directory) + os.sep
    files = all_files(root)
    assert all(str(p).startswith(store_dir) for p in files)
    assert all(len(p.name) == 64 or p.name == ".lock" for p in files)
    assert store.delete_many(AWKWARD_KEYS) == len(AWKWARD_KEYS)
    assert all(p.name == ".lock" for p in all_files(root))


# -- semantics shared with MemoryBackend -------------------------------------------------


def test_basic_operations(store: FileSystemBackend) -> None:
    """get/set/add/replace/delete/exists/incr/gets/cas behave like MemoryBackend's."""
    assert store.get("k") is None
    assert not store.exists("k")
    assert store.add("k", b"1") is True
    assert store.add("k", b"2") is False
    assert store.replace("k", b"3") is True
    assert store.replace("missing", b"x") is False
    assert store.get("k") == b"3"
    assert store.exists("k")
    assert store.incr("k", 10) == 13
    assert store.get("k") == b"13"
    assert store.incr("k", -20) == -7
    assert store.get("k") == b"-7"
    assert store.incr("new") == 1
    assert store.delete("k") is True
    assert store.delete("k") is False
    store.set("v", bytearray(b"ba"))  # type: ignore[arg-type]
    store.set("w", memoryview(b"mv"))  # type: ignore[arg-type]
    assert store.get_many(["v", "nope", "w"]) == [b"ba", None, b"mv"]
    store.set("empty", b"")
    assert store.get("empty") == b""
    assert store.exists("empty")


def test_batches_follow_memory_order_rules(store: FileSystemBackend) -> None:
    """add_many sees earlier pairs, set_many's last duplicate wins, delete_many counts once."""
    assert store.add_many([("a", b"1"), ("a", b"2"), ("b", b"3")]) == [True, False, True]
    assert store.get("a") == b"1"
    store.set_many([("c", b"1"), ("c", b"2")])
    assert store.get("c") == b"2"
    assert store.replace_many([("a", b"x"), ("zz", b"y"), ("a", b"z")]) == [True, False, True]
    assert store.get("a") == b"z"
    assert store.get("zz") is None
    assert store.delete_many(["a", "a", "b", "nope"]) == 2
    assert store.get_many([]) == []
    assert store.add_many([]) == []
    assert store.delete_many([]) == 0
    store.set_many([])


def test_large_value_round_trips(store: FileSystemBackend) -> None:
    """A value larger than the first read is read back whole."""
    value = os.urandom(3_000_000)
    store.set("big", value)
    assert store.get("big") == value
    got = store.gets("big")
    assert got is not None
    assert got[0] == value


def test_bad_arguments_fail_before_any_io(store: FileSystemBackend) -> None:
    """Bad keys, values, TTLs and deltas raise the shared errors and write nothing."""
    with pytest.raises(TypeError, match="backend keys must be str"):
        store.set(1, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value for key 'k' must be bytes"):
        store.set("k", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidTTL):
        store.set("k", b"v", ttl=0)
    with pytest.raises(InvalidTTL):
        store.add("k", b"v", ttl=-1)
    with pytest.raises(TypeError):
        store.set_many([("a", b"ok"), ("b", "bad")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.get_many(["a", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="incr delta must be an int"):
        store.incr("n", True)
    with pytest.raises(TypeError, match="incr delta must be an int"):
        store.incr("n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidTTL):
        store.cas("k", b"v", b"token", ttl=float("nan"))
    assert all_files(store.directory) == []


def test_incr_rejects_non_integers(store: FileSystemBackend) -> None:
    """incr on a value that is not ASCII digits raises a BackendError naming the key."""
    for bad in [b"abc", b"1.5", b" 1", b"", "٣".encode()]:
        store.set("n", bad)
        with pytest.raises(BackendError, match=r"'n'.*not an ASCII integer") as info:
            store.incr("n")
        assert info.value.key == "n"
        assert store.get("n") == bad
    store.set("n", b"9" * 5000)
    with pytest.raises(BackendError, match="too long an integer"):
        store.incr("n")


def test_gets_and_cas(store: FileSystemBackend) -> None:
    """cas succeeds with a fresh token only; stale, foreign or missing-key tokens give False."""
    assert store.gets("k") is None
    store.set("k", b"v1")
    got = store.gets("k")
    assert got is not None
    value, token = got
    assert value == b"v1"
    assert isinstance(token, bytes)
    assert store.cas("k", b"v2", token) is True
    assert store.get("k") == b"v2"
    assert store.cas("k", b"v3", token) is False
    fresh = store.gets("k")
    assert fresh is not None
    assert fresh[1] != token
    assert store.cas("k", b"v3", 12345) is False
    assert isinstance(fresh[1], bytes)
    assert store.cas("k", b"v3", fresh[1].hex()) is False
    assert store.cas("other", b"v3", fresh[1]) is False
    store.set("k", b"same")
    assert store.cas("k", b"v4", fresh[1]) is False, "a set changes the token"
    assert store.get("k") == b"same"


# -- TTL -------------------------------------------------------------------------------


def test_ttl_expiry_with_fake_clock(store: FileSystemBackend, clock: FakeClock) -> None:
    """Expired keys are absent for every operation, as in MemoryBackend."""
    store.set_many([(k, b"old") for k in "abcdefg"], ttl=10)
    clock.advance(9.999)
    assert store.get("a") == b"old"
    clock.advance(0.001)
    assert store.get("a") is None
    assert store.gets("a") is None
    assert not store.exists("a")
    assert store.get_many(["g"]) == [None]
    assert entry_path(store, "g").exists(), "lock-free readers never delete expired files"
    assert store.get_many(["a", "b"]) == [None, None]
    assert store.add("a", b"new") is True
    assert store.get("a") == b"new"
    assert store.replace("b", b"new") is False
    assert store.get("b") is None
    assert not entry_path(store, "b").exists(), "replace removes the expired file under the lock"
    assert store.delete("c") is False
    assert not entry_path(store, "c").exists()
    assert store.delete_many(["d", "a"]) == 1
    assert store.incr("e", 5) == 5
    clock.advance(1000)
    assert store.get("e") == b"5", "a counter restarted after expiry has no TTL"
    assert store.cas("f", b"x", b"0" * 16) is False
    assert not entry_path(store, "f").exists()


def test_set_without_ttl_clears_ttl_and_incr_keeps_it(
    store: FileSystemBackend, clock: FakeClock
) -> None:
    """A write without ttl removes the old TTL; incr keeps the key's TTL."""
    store.set("k", b"1", ttl=5)
    store.set("k", b"2")
    store.set("n", b"1", ttl=5)
    assert store.incr("n") == 2
    got = store.gets("c") or (b"", b"")
    assert got == (b"", b"")
    store.set("c", b"v", ttl=5)
    token = store.gets("c")
    assert token is not None
    assert store.cas("c", b"w", token[1]) is True
    clock.advance(6)
    assert store.get("k") == b"2"
    assert store.get("n") is None
    assert store.get("c") == b"w", "cas without ttl clears the TTL"


def test_default_clock_is_wall_time_and_survives_instances(tmp_path: Path) -> None:
    """Without a clock, expiry is absolute wall-clock time, honoured by a new instance."""
    FileSystemBackend(tmp_path).set("short", b"v", ttl=0.05)
    FileSystemBackend(tmp_path).set("long", b"v", ttl=3600)
    threading.Event().wait(0.1)
    again = FileSystemBackend(tmp_path)
    assert again.get("short") is None
    assert again.get("long") == b"v"


def test_purge_expired(store: FileSystemBackend, clock: FakeClock) -> None:
    """purge_expired removes expired files and orphaned temp files and counts the entries."""
    store.set_many([(f"e{i}", b"v") for i in range(20)], ttl=5)
    store.set_many([(f"l{i}", b"v") for i in range(5)])
    store.set("later", b"v", ttl=50)
    orphan = entry_path(store, "l0").parent / ".tmp-deadbeef"
    orphan.write_bytes(b"half a write")
    (store.directory / "stray.txt").write_bytes(b"not ours")
    assert store.purge_expired() == 0
    assert not orphan.exists()
    clock.advance(5)
    assert store.purge_expired() == 20
    assert store.purge_expired() == 0
    entries = [p for p in all_files(store.directory) if len(p.name) == 64]
    assert len(entries) == 6
    assert (store.directory / "stray.txt").exists()


def test_purge_skips_malformed_files(store: FileSystemBackend) -> None:
    """A malformed entry file is left alone by purge_expired."""
    store.set("k", b"v")
    entry_path(store, "k").write_bytes(b"garbage")
    assert store.purge_expired() == 0
    assert entry_path(store, "k").exists()


def test_clear(store: FileSystemBackend) -> None:
    """clear removes every entry but keeps shard directories and lock files."""
    store.set_many([(f"k{i}", b"v") for i in range(50)])
    store.clear()
    assert store.get_many([f"k{i}" for i in range(50)]) == [None] * 50
    assert all(p.name == ".lock" for p in all_files(store.directory))
    store.clear()
    store.set("k0", b"again")
    assert store.get("k0") == b"again"


def test_close_is_a_no_op(store: FileSystemBackend) -> None:
    """close releases nothing and the store stays usable."""
    store.set("k", b"v")
    store.close()
    assert store.get("k") == b"v"


def test_fsync_option_syncs_files_and_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync=True each write fsyncs the temporary file and then the shard directory."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    store = FileSystemBackend(tmp_path, fsync=True)
    store.set("k", b"v")
    assert len(synced) == 2
    assert store.delete("k") is True
    assert len(synced) == 3
    FileSystemBackend(tmp_path).set("k", b"v")
    assert len(synced) == 3


# -- differential check against MemoryBackend -----------------------------------------------


def _apply(
    backend: Any, side: int, spec: dict[str, Any], tokens: dict[tuple[str, int], object]
) -> object:
    """Run one random step on one backend; a BackendError becomes its type name."""
    op, key, value, ttl, batch = spec["op"], spec["key"], spec["value"], spec["ttl"], spec["batch"]
    try:
        if op in ("get", "delete", "exists"):
            return getattr(backend, op)(key)
        if op in ("set", "add", "replace"):
            return getattr(backend, op)(key, value, ttl=ttl)
        if op == "incr":
            return backend.incr(key, spec["delta"])
        if op == "gets":
            got = backend.gets(key)
            if got is None:
                tokens.pop((key, side), None)
                return None
            tokens[key, side] = got[1]
            return got[0]
        if op == "gets_cas":
            got = backend.gets(key)
            return got and (got[0], backend.cas(key, value, got[1], ttl=ttl))
        if op == "cas":
            token = tokens.get((key, side))
            return None if token is None else backend.cas(key, value, token, ttl=ttl)
        if batch in ("delete_many", "get_many"):
            return getattr(backend, batch)([k for k, _ in spec["pairs"]])
        return getattr(backend, batch)(spec["pairs"], ttl=ttl)
    except BackendError as exc:
        return type(exc).__name__


def test_random_operations_match_memory_backend(tmp_path: Path) -> None:
    """A random mix of operations gives the same results as MemoryBackend on the same clock."""
    clock = FakeClock()
    fs = FileSystemBackend(tmp_path, clock=clock)
    mem = MemoryBackend(clock=clock)
    rng = random.Random(1234)
    keys = [f"k{i}" for i in range(6)]
    tokens: dict[tuple[str, int], object] = {}

    def ttl() -> float | None:
        return rng.choice([None, None, 1, 3])

    for step in range(600):
        op = rng.choice(
            ["get", "set", "add", "replace", "delete", "exists", "incr", "gets", "cas", "gets_cas"]
            + ["many"] * 2
        )
        spec: dict[str, Any] = {
            "op": op,
            "key": rng.choice(keys),
            "value": rng.choice([b"1", b"22", b"x", b""]),
            "ttl": ttl(),
            "delta": rng.randint(-3, 3),
            "pairs": [(rng.choice(keys), rng.choice([b"1", b"x"])) for _ in range(4)],
            "batch": rng.choice(
                ["add_many", "replace_many", "set_many", "delete_many", "get_many"]
            ),
        }
        out = (_apply(fs, 0, spec, tokens), _apply(mem, 1, spec, tokens))
        assert out[0] == out[1], (step, spec)
        clock.advance(rng.choice([0, 0, 0.5, 1]))


# -- atomicity and failures ----------------------------------------------------------------


def test_failed_replace_keeps_old_value_and_no_temp_files(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write whose rename fails raises BackendError and leaves the old value, no temp file."""
    store.set("k", b"7")

    def fail(src: Any, dst: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", fail)
    token = store.gets("k")
    assert token is not None
    for attempt in (
        lambda: store.set("k", b"new"),
        lambda: store.set_many([("k", b"new")]),
        lambda: store.replace("k", b"new"),
        lambda: store.incr("k"),
        lambda: store.cas("k", b"new", token[1]),
    ):
        with pytest.raises(BackendError) as info:
            attempt()
        assert info.value.key == "k"
        assert str(entry_path(store, "k")) in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()
    assert store.get("k") == b"7"
    assert temp_files(store.directory) == []


def test_failed_write_of_data_cleans_up(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write(2) failure half way leaves no temp file and no new value."""
    real_write = os.write

    def short_then_fail(fd: int, data: Any) -> int:
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.EIO, "I/O error")

    store.set("k", b"old")
    monkeypatch.setattr(os, "write", short_then_fail)
    with pytest.raises(BackendError, match="could not write key 'k'"):
        store.set("k", b"a longer new value")
    monkeypatch.undo()
    assert store.get("k") == b"old"
    assert temp_files(store.directory) == []


def test_permission_errors_are_backend_errors(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PermissionError creating a temp file, locking or reading is a chained BackendError."""
    store.set("k", b"old")
    real_open = os.open

    def deny(fragment: str) -> Callable[..., int]:
        def fake_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            if fragment in os.fspath(path):
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real_open(path, flags, mode, **kw)

        return fake_open

    attempts: list[tuple[str, Callable[[], object]]] = [
        (".tmp-", lambda: store.set("k", b"new")),
        (".lock", lambda: store.add("k", b"new")),
        (".lock", lambda: store.delete("k")),
        (entry_path(store, "k").name, lambda: store.get("k")),
        (entry_path(store, "k").name, lambda: store.exists("k")),
        (entry_path(store, "k").name, lambda: store.gets("k")),
        (entry_path(store, "k").name, lambda: store.get_many(["k"])),
        (f"{os.sep}{entry_path(store, 'k').parent.name}", lambda: store.get("k")),
        (f"{os.sep}{entry_path(store, 'k').parent.name}", lambda: store.set("k", b"new")),
    ]
    for fragment, action in attempts:
        monkeypatch.setattr(os, "open", deny(fragment))
        with pytest.raises(BackendError, match="'k'") as info:
            action()
        monkeypatch.undo()
        assert isinstance(info.value.__cause__, PermissionError)
        assert info.value.key == "k"
        assert info.value.server == str(store.directory)
        assert str(entry_path(store, "k")) in str(info.value)
    assert store.get("k") == b"old"
    assert temp_files(store.directory) == []


def test_sweep_errors_are_backend_errors(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError during clear or purge_expired is a BackendError naming the path."""
    store.set("k", b"v")

    def fail(path: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "unlink", fail)
    with pytest.raises(BackendError, match="could not clear the store") as info:
        store.clear()
    assert isinstance(info.value.__cause__, PermissionError)
    assert str(entry_path(store, "k")) in str(info.value)
    with pytest.raises(BackendError, match="could not delete key 'k'") as info:
        store.delete("k")
    assert isinstance(info.value.__cause__, PermissionError)
    monkeypatch.undo()
    assert store.get("k") == b"v"


def test_lock_failure_is_a_backend_error_and_releases_nothing_held(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An flock failure is a chained BackendError, and a batch's earlier locks are released."""
    import fcntl

    real_flock = fcntl.flock
    calls: list[int] = []

    def flaky_flock(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOLCK, "No locks available")
        real_flock(fd, op)

    keys = ["a", "b"]
    assert entry_path(store, "a").parent != entry_path(store, "b").parent
    monkeypatch.setattr(fcntl, "flock", flaky_flock)
    with pytest.raises(BackendError, match="could not lock") as info:
        store.set_many([(k, b"v") for k in keys])
    monkeypatch.undo()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.key in keys
    assert store.get_many(keys) == [None, None]
    assert store.add("a", b"v") is True, "the first shard's lock was released"


def test_vanished_directory_is_an_error(tmp_path: Path) -> None:
    """When the store directory is removed, reads and writes raise BackendError, not 'absent'."""
    store = FileSystemBackend(tmp_path / "gone")
    store.set("k", b"v")
    for p in sorted(all_files(tmp_path / "gone"), reverse=True):
        p.unlink()
    for d in sorted((tmp_path / "gone").iterdir(), reverse=True):
        d.rmdir()
    (tmp_path / "gone").rmdir()
    with pytest.raises(BackendError, match="vanished"):
        store.get("k")
    with pytest.raises(BackendError, match="vanished"):
        store.get_many(["k"])
    with pytest.raises(BackendError, match="could not lock") as info:
        store.set("k", b"v")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(BackendError, match="purge"):
        store.purge_expired()
    assert not (tmp_path / "gone").exists(), "the backend never recreates a vanished directory"


# -- corrupted files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:20], "truncated header"),
        (lambda d: d[: HEADER_SIZE + 1], "truncated key"),
        (lambda d: d[:-3], "truncated value"),
        (lambda d: d + b"xx", "trailing bytes"),
        (lambda d: b"JUNK" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x07" + d[5:], "unsupported format version 7"),
        (lambda d: d[:5] + b"\x06" + d[6:], "unknown flags"),
        (lambda d: d[:5] + b"\x01\x00\x00" + b"\x7f\xf8" + b"\x00" * 6 + d[16:], "invalid expiry"),
        (lambda d: b"", "truncated header"),
    ],
)
def test_corrupted_file_is_a_backend_error(
    store: FileSystemBackend, mutate: Callable[[bytes], bytes], reason: str
) -> None:
    """A truncated or foreign entry file raises BackendError naming the key and the file."""
    store.set("key", b"some value")
    path = entry_path(store, "key")
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(BackendError, match=reason) as info:
        store.get("key")
    assert info.value.key == "key"
    assert "'key'" in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(BackendError, match=reason):
        store.gets("key")


def test_file_holding_another_key_is_corrupt(store: FileSystemBackend) -> None:
    """A file copied onto another key's path is detected by the stored key."""
    store.set("alpha", b"A")
    store.set("bravo", b"B")
    entry_path(store, "bravo").write_bytes(entry_path(store, "alpha").read_bytes())
    for op in (store.get, store.exists, store.gets):
        with pytest.raises(BackendError, match="holds another key"):
            op("bravo")
    with pytest.raises(BackendError, match="holds another key"):
        store.add("bravo", b"x")
    with pytest.raises(BackendError, match="holds another key"):
        store.incr("bravo")
    store.set("alpha2", b"A")
    longer = entry_path(store, "alpha2").read_bytes()
    entry_path(store, "bravo").write_bytes(longer)
    with pytest.raises(BackendError, match="holds another key"):
        store.get("bravo")


def test_corrupt_entries_can_be_deleted_or_overwritten(store: FileSystemBackend) -> None:
    """delete removes a corrupt file (counting it) and set overwrites one."""
    store.set_many([("a", b"1"), ("b", b"2")])
    entry_path(store, "a").write_bytes(b"garbage")
    entry_path(store, "b").write_bytes(b"")
    assert store.delete("a") is True
    assert store.get("a") is None
    store.set("b", b"fixed")
    assert store.get("b") == b"fixed"


# -- concurrency -------------------------------------------------------------------------------


def _race_add(directory: str, keys: list[str], barrier: Any, results: Any) -> None:
    store = FileSystemBackend(directory)
    barrier.wait()
    wins = sum(store.add(key, str(os.getpid()).encode()) for key in keys)
    results.put(wins)


def _race_incr(directory: str, count: int, barrier: Any, results: Any) -> None:
    store = FileSystemBackend(directory)
    barrier.wait()
    for _ in range(count):
        store.incr("counter")
    results.put(count)


def _run_processes(target: Callable[..., None], *args: Any) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return outcomes


def test_cross_process_add_has_one_winner_per_key(tmp_path: Path) -> None:
    """Four processes racing add on the same 50 keys produce exactly one winner per key."""
    keys = [f"key-{i}" for i in range(50)]
    wins = _run_processes(_race_add, str(tmp_path), keys)
    assert sum(wins) == 50
    store = FileSystemBackend(tmp_path)
    assert all(v is not None for v in store.get_many(keys))
    assert temp_files(tmp_path) == []


def test_cross_process_incr_loses_no_update(tmp_path: Path) -> None:
    """Four processes each incrementing a counter 200 times end at exactly 800."""
    assert _run_processes(_race_incr, str(tmp_path), 200) == [200] * 4
    assert FileSystemBackend(tmp_path).get("counter") == b"800"


def test_threaded_cas_loop_loses_no_update(tmp_path: Path) -> None:
    """Eight threads doing 200 gets/cas increments each end at exactly 1600."""
    store = FileSystemBackend(tmp_path)
    store.set("n", b"0")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                while True:
                    got = store.gets("n")
                    assert got is not None
                    if store.cas("n", str(int(got[0]) + 1).encode(), got[1]):
                        break
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get("n") == b"1600"


def test_readers_never_see_partial_values(tmp_path: Path) -> None:
    """Readers racing a writer of large values only ever see one complete value."""
    store = FileSystemBackend(tmp_path)
    values = [bytes([i]) * 200_000 for i in range(4)]
    store.set("k", values[0])
    stop = threading.Event()
    seen: list[bytes | None] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(store.get("k"))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(40):
        store.set("k", values[i % 4])
    stop.set()
    for t in readers:
        t.join()
    assert seen
    assert all(v in values for v in seen)


def test_batches_in_opposite_orders_do_not_deadlock(tmp_path: Path) -> None:
    """Batches over many shards in opposite key orders finish: shards are locked sorted."""
    store = FileSystemBackend(tmp_path)
    keys = [f"key-{i}" for i in range(40)]
    assert len({entry_path(store, k).parent for k in keys}) > 20

    def work(order: list[str]) -> None:
        for _ in range(15):
            store.set_many([(k, b"v") for k in order])
            store.add_many([(k, b"w") for k in order])
            store.delete_many(order[:5])

    threads = [
        threading.Thread(target=work, args=(order,), daemon=True)
        for order in (keys, keys[::-1], keys[::2] + keys[1::2])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
