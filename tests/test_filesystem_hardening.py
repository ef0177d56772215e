"""FileSystemBackend against a hostile directory, interrupted writers and KEEP_TTL.

Every operation that could hang runs in a thread joined with a timeout, so a
regression fails the test instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cacheorm as co
from cacheorm._backend import Closing
from cacheorm._errors import BackendError, ConfigurationError, InvalidTTL
from cacheorm._filesystem import FileSystemBackend
from tests.conftest import FakeClock

SRC = str(Path(__file__).resolve().parents[1] / "src")
#: Seconds an operation may take before it counts as hung.
HANG = 10.0


def run(fn: Callable[[], Any], timeout: float = HANG) -> Any:
    """``fn()`` in a daemon thread: its result, or its exception re-raised; fails if it hangs."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"operation hung for more than {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> FileSystemBackend:
    """A FileSystemBackend on a fresh directory, timed by the fake clock."""
    return FileSystemBackend(tmp_path / "store", clock=clock)


def entry_path(store: FileSystemBackend, key: str) -> Path:
    """Where ``store`` keeps ``key``."""
    name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return store.directory / name[:2] / name


def shard_of(key: str) -> str:
    """The shard directory name of ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()[:2]


def same_shard(key: str, count: int = 1) -> list[str]:
    """``count`` other keys that live in ``key``'s shard."""
    found = [k for k in (f"n{i}" for i in range(20000)) if shard_of(k) == shard_of(key)]
    return [k for k in found if k != key][:count]


def other_shard_keys(count: int) -> list[str]:
    """``count`` keys in pairwise different shards."""
    seen: dict[str, str] = {}
    for i in range(1000):
        seen.setdefault(shard_of(f"s{i}"), f"s{i}")
        if len(seen) == count:
            break
    return list(seen.values())


@pytest.fixture
def fifos() -> Iterator[list[Path]]:
    """FIFOs a test plants; a reader still blocked on one (a regression) is let go at the end."""
    planted: list[Path] = []
    yield planted
    for path in planted:
        # Opening the write end wakes a reader blocked in open(2); ENXIO: none waits.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def plant_fifo(path: Path, fifos: list[Path]) -> None:
    """A FIFO at ``path`` (its shard directory created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    fifos.append(path)


#: Every key operation and what it must do when the entry path holds something
#: that is not a regular file: "error" (BackendError naming the key), or the
#: value it returns after replacing / removing that thing.
KEY_OPERATIONS: list[tuple[str, Callable[[FileSystemBackend, str], Any], object]] = [
    ("get", lambda s, k: s.get(k), "error"),
    ("get_many", lambda s, k: s.get_many(["other", k]), "error"),
    ("gets", lambda s, k: s.gets(k), "error"),
    ("exists", lambda s, k: s.exists(k), "error"),
    ("add", lambda s, k: s.add(k, b"v"), "error"),
    ("add_many", lambda s, k: s.add_many([(k, b"v")]), "error"),
    ("replace", lambda s, k: s.replace(k, b"v"), "error"),
    ("replace_many", lambda s, k: s.replace_many([(k, b"v")]), "error"),
    ("replace keep", lambda s, k: s.replace(k, b"v", ttl=co.KEEP_TTL), "error"),
    ("cas", lambda s, k: s.cas(k, b"v", b"\x00" * 16), "error"),
    ("incr", lambda s, k: s.incr(k), "error"),
    ("set", lambda s, k: s.set(k, b"v"), None),
    ("set_many", lambda s, k: s.set_many([(k, b"v")]), None),
    ("delete", lambda s, k: s.delete(k), True),
    ("delete_many", lambda s, k: s.delete_many([k]), 1),
]
OP_IDS = [name for name, _, _ in KEY_OPERATIONS]


# -- item 9a: FIFOs, sockets and directories at an entry's path ---------------------------


@pytest.mark.parametrize(("name", "op", "outcome"), KEY_OPERATIONS, ids=OP_IDS)
def test_fifo_at_entry_path_never_hangs(
    store: FileSystemBackend,
    fifos: list[Path],
    name: str,
    op: Callable[[FileSystemBackend, str], Any],
    outcome: object,
) -> None:
    """A FIFO planted at an entry is a BackendError naming the key (set replaces it,
    delete removes it), at once, and the shard stays usable for other keys."""
    path = entry_path(store, "victim")
    plant_fifo(path, fifos)
    if outcome == "error":
        with pytest.raises(BackendError, match=r"'victim'.*a FIFO, not a regular file") as info:
            run(lambda: op(store, "victim"))
        assert info.value.key == "victim"
        assert str(path) in str(info.value)
        assert stat.S_ISFIFO(path.lstat().st_mode), "a failed operation leaves the file alone"
    else:
        assert run(lambda: op(store, "victim")) == outcome
        if name.startswith("set"):
            assert run(lambda: store.get("victim")) == b"v"
        else:
            assert not path.exists()
    neighbour = same_shard("victim")[0]
    run(lambda: store.set(neighbour, b"n"))
    assert run(lambda: store.add(same_shard("victim", 2)[1], b"n")) is True
    assert run(lambda: store.get(neighbour)) == b"n"


def test_fifo_entries_do_not_hang_purge_or_clear(
    store: FileSystemBackend, fifos: list[Path], clock: FakeClock
) -> None:
    """purge_expired leaves a FIFO at an entry name alone; clear removes it; neither blocks."""
    store.set("k", b"v", ttl=1)
    path = entry_path(store, "victim")
    plant_fifo(path, fifos)
    clock.advance(2)
    assert run(store.purge_expired) == 1
    assert stat.S_ISFIFO(path.lstat().st_mode)
    run(store.clear)
    assert not path.exists()


def test_socket_at_entry_path_is_an_error(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Unix socket at an entry's path is a BackendError naming the key for reads and writes."""
    path = entry_path(store, "victim")
    path.parent.mkdir(parents=True)
    monkeypatch.chdir(path.parent)  # socket paths are limited to ~107 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path.name)
        for op in (store.get, store.exists, store.gets, store.incr):
            with pytest.raises(BackendError, match=r"'victim'.*a socket") as info:
                run(lambda op=op: op("victim"))  # type: ignore[misc]
            assert info.value.key == "victim"
        with pytest.raises(BackendError, match="a socket"):
            run(lambda: store.add("victim", b"v"))
        assert run(lambda: store.delete("victim")) is True


def test_directory_at_entry_path_is_an_error(store: FileSystemBackend) -> None:
    """A directory at an entry's path is reported by every operation, and never removed."""
    path = entry_path(store, "victim")
    path.mkdir(parents=True)
    (path / "inside").write_bytes(b"keep")
    for name, op, _ in KEY_OPERATIONS:
        with pytest.raises(BackendError, match="'victim'") as info:
            run(lambda op=op: op(store, "victim"))  # type: ignore[misc]
        assert info.value.key == "victim", name
    assert (path / "inside").read_bytes() == b"keep"
    with pytest.raises(BackendError, match="could not clear the store"):
        run(store.clear)
    assert run(store.purge_expired) == 0
    assert (path / "inside").read_bytes() == b"keep"


def test_symlink_at_entry_path_is_not_followed(tmp_path: Path, clock: FakeClock) -> None:
    """An entry that is a symbolic link (even to a valid entry elsewhere) is never followed."""
    store = FileSystemBackend(tmp_path / "store", clock=clock)
    elsewhere = FileSystemBackend(tmp_path / "elsewhere", clock=clock)
    elsewhere.set("victim", b"someone else's record")
    path = entry_path(store, "victim")
    path.parent.mkdir(parents=True)
    path.symlink_to(entry_path(elsewhere, "victim"))
    for name, op, outcome in KEY_OPERATIONS:
        if outcome != "error":
            continue
        with pytest.raises(BackendError, match=r"'victim'.*symbolic link") as info:
            run(lambda op=op: op(store, "victim"))  # type: ignore[misc]
        assert info.value.key == "victim", name
    assert run(store.purge_expired) == 0
    assert path.is_symlink(), "purge_expired leaves what is not a regular file alone"
    assert run(lambda: store.delete("victim")) is True
    assert not path.is_symlink()
    assert elsewhere.get("victim") == b"someone else's record", "the link's target is untouched"


def test_file_kinds_are_named() -> None:
    """Messages name what a non-regular file is (devices and sockets included)."""
    from cacheorm._filesystem import _file_kind

    assert _file_kind(stat.S_IFDIR) == "a directory"
    assert _file_kind(stat.S_IFIFO) == "a FIFO"
    assert _file_kind(stat.S_IFCHR) == "a device"
    assert _file_kind(stat.S_IFBLK) == "a device"
    assert _file_kind(stat.S_IFSOCK) == "file type 0o140000"


def test_purge_reports_unreadable_entries_and_skips_vanished_shards(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """purge_expired reports an entry it may not open, and skips a shard removed meanwhile."""
    store.set("k", b"v")
    real_open = os.open

    def deny(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == entry_path(store, "k").name:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(BackendError, match="could not purge expired entries") as info:
        store.purge_expired()
    assert isinstance(info.value.__cause__, PermissionError)
    monkeypatch.undo()
    real_shards = FileSystemBackend._shards
    monkeypatch.setattr(FileSystemBackend, "_shards", lambda self: ["zz", *real_shards(self)])
    assert store.purge_expired() == 0
    store.clear()
    assert store.get("k") is None


def test_planted_fifo_as_lock_file_never_hangs(store: FileSystemBackend, fifos: list[Path]) -> None:
    """A FIFO planted as a shard's .lock makes writes a BackendError at once; reads still work."""
    store.set("victim", b"old")
    lock = entry_path(store, "victim").parent / ".lock"
    lock.unlink()
    plant_fifo(lock, fifos)
    for name, op, _ in KEY_OPERATIONS[4:]:
        with pytest.raises(BackendError, match=r"'victim'.*lock file .* is a FIFO") as info:
            run(lambda op=op: op(store, "victim"))  # type: ignore[misc]
        assert info.value.key == "victim", name
    assert run(lambda: store.get("victim")) == b"old"
    with pytest.raises(BackendError, match="is a FIFO"):
        run(store.purge_expired)


# -- item 9b: sizes claimed by a header ------------------------------------------------------


def claim(path: Path, value_len: int) -> None:
    """Rewrite the value length in the header of the entry file at ``path``."""
    data = bytearray(path.read_bytes())
    struct.pack_into(">Q", data, 36, value_len)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("claimed", [2**40, 2**63, 2**64 - 1, 11])
def test_header_claiming_a_huge_value_is_corrupt_not_memory_error(
    store: FileSystemBackend, claimed: int
) -> None:
    """A header claiming more bytes than the file holds is a BackendError on every path."""
    store.set("k", b"ten bytes!")
    claim(entry_path(store, "k"), claimed)
    for name, op, outcome in KEY_OPERATIONS:
        if outcome != "error":
            continue
        with pytest.raises(BackendError, match=rf"'k'.*header claims {claimed} bytes") as info:
            run(lambda op=op: op(store, "k"))  # type: ignore[misc]
        assert info.value.key == "k", name
    assert run(store.purge_expired) == 0, "purge reads headers only and leaves it alone"
    assert entry_path(store, "k").exists()
    assert run(lambda: store.delete("k")) is True


def test_header_claiming_less_than_the_file_is_corrupt_everywhere(store: FileSystemBackend) -> None:
    """Trailing bytes are found from the file's size, by exists and add as well as get."""
    store.set("k", b"value")
    claim(entry_path(store, "k"), 2)
    for op in (store.get, store.exists, store.gets):
        with pytest.raises(BackendError, match="3 trailing bytes"):
            op("k")
    with pytest.raises(BackendError, match="3 trailing bytes"):
        store.replace("k", b"v")


def test_value_too_large_for_memory_is_a_backend_error(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real (say sparse) file too large to read into memory is a BackendError naming the key."""
    store.set("k", b"x" * 100_000)
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        if n > 50_000:
            raise MemoryError
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    with pytest.raises(BackendError, match=r"'k'.*100000-byte value does not fit in memory"):
        store.get("k")
    assert store.exists("k")


def test_file_cut_short_while_read_is_corrupt(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file truncated in place after its size was taken is reported, not returned short."""
    store.set("k", b"x" * 100_000)
    real_read = os.read
    calls: list[int] = []

    def read(fd: int, n: int) -> bytes:
        calls.append(n)
        return b"" if n == 100_000 + 45 - 16384 else real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    with pytest.raises(BackendError, match="truncated value"):
        store.get("k")


# -- item 9c: symbolic links and foreign files as shards and lock files --------------------


def test_planted_lock_symlink_creates_nothing_outside(
    store: FileSystemBackend, tmp_path: Path
) -> None:
    """A .lock symlink (dangling or to a real file) is refused; no file appears outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    store.set("victim", b"old")
    lock = entry_path(store, "victim").parent / ".lock"
    lock.unlink()
    lock.symlink_to(outside / "created-by-the-store")
    for name, op, _ in KEY_OPERATIONS[4:]:
        with pytest.raises(BackendError, match=r"'victim'.*\.lock is a symbolic link") as info:
            run(lambda op=op: op(store, "victim"))  # type: ignore[misc]
        assert info.value.key == "victim", name
    for sweep in (store.purge_expired, store.clear):
        with pytest.raises(BackendError, match=r"\.lock is a symbolic link"):
            run(sweep)
    assert list(outside.iterdir()) == []
    (outside / "real").write_bytes(b"precious")
    lock.unlink()
    lock.symlink_to(outside / "real")
    with pytest.raises(BackendError, match="symbolic link"):
        store.set("victim", b"new")
    assert (outside / "real").read_bytes() == b"precious"
    assert store.get("victim") == b"old"


def test_symlinked_shard_directory_is_never_entered(
    store: FileSystemBackend, tmp_path: Path
) -> None:
    """A shard that is a symbolic link to a directory outside is refused by every operation,
    and purge_expired / clear never touch the files it points to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    decoy = FileSystemBackend(tmp_path / "decoy")
    decoy.set("victim", b"outside record")
    real_shard = entry_path(decoy, "victim").parent
    planted = [real_shard / ".tmp-0123", real_shard / ("ab" * 32)]
    for path in planted:
        path.write_bytes(b"someone else's file")
    store.set("other", b"kept")
    shard = entry_path(store, "victim").parent
    assert shard != entry_path(store, "other").parent
    shard.symlink_to(real_shard)
    before = sorted(p.name for p in real_shard.iterdir())
    for name, op, _ in KEY_OPERATIONS:
        with pytest.raises(BackendError, match=r"'victim'.*symbolic link or not a directory") as e:
            run(lambda op=op: op(store, "victim"))  # type: ignore[misc]
        assert e.value.key == "victim", name
    for sweep in (store.purge_expired, store.clear):
        with pytest.raises(BackendError, match=rf"{shard} is a symbolic link"):
            run(sweep)
    assert sorted(p.name for p in real_shard.iterdir()) == before
    assert decoy.get("victim") == b"outside record"
    assert all(p.read_bytes() == b"someone else's file" for p in planted)
    assert store.get("other") is None, "clear still cleared the real shards"


def test_file_in_place_of_a_shard_is_an_error(store: FileSystemBackend) -> None:
    """A regular file where a shard directory belongs is a BackendError naming the key."""
    shard = entry_path(store, "victim").parent
    shard.write_bytes(b"not a directory")
    for name, op, _ in KEY_OPERATIONS:
        with pytest.raises(BackendError, match="'victim'") as info:
            run(lambda op=op: op(store, "victim"))  # type: ignore[misc]
        assert info.value.key == "victim", name
    assert shard.read_bytes() == b"not a directory"


# -- item 9d: permissions -------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, 022, for the test's duration."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(store: FileSystemBackend, key: str) -> tuple[int, int, int, int]:
    """Permission bits of the store directory, the key's shard, its entry and the lock file."""
    entry = entry_path(store, key)
    return tuple(  # type: ignore[return-value]
        stat.S_IMODE(p.stat().st_mode)
        for p in (store.directory, entry.parent, entry, entry.parent / ".lock")
    )


@pytest.mark.usefixtures("umask_022")
def test_store_is_private_by_default(tmp_path: Path) -> None:
    """With umask 022 the store is still created 0700 (directories) and 0600 (files)."""
    store = FileSystemBackend(tmp_path / "a" / "store")
    store.set("k", b"secret")
    store.incr("n")
    assert modes(store, "k") == (0o700, 0o700, 0o600, 0o600)
    assert stat.S_IMODE(entry_path(store, "n").stat().st_mode) == 0o600
    assert store.mode == 0o600


@pytest.mark.usefixtures("umask_022")
def test_mode_shares_the_store_when_asked(tmp_path: Path) -> None:
    """mode=0o640 gives group read: files 0640, directories 0750."""
    store = FileSystemBackend(tmp_path / "store", mode=0o640)
    store.set("k", b"shared")
    assert modes(store, "k") == (0o750, 0o750, 0o640, 0o640)


def test_bad_mode_is_refused(tmp_path: Path) -> None:
    """A mode that is not an int, exceeds 0o777 or locks the owner out is refused."""
    with pytest.raises(TypeError, match="mode must be an int"):
        FileSystemBackend(tmp_path, mode="0600")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mode must be an int"):
        FileSystemBackend(tmp_path, mode=True)
    for bad in (0o400, 0o200, 0o1600, -1):
        with pytest.raises(ConfigurationError, match="owner read and write"):
            FileSystemBackend(tmp_path, mode=bad)


# -- item 1: BaseException while a lock is held -------------------------------------------------


class Timeout(BaseException):
    """Stands for a gevent / eventlet / test-runner timeout: a BaseException, not an Exception."""


INTERRUPTS = [KeyboardInterrupt, SystemExit, Timeout]


def assert_shard_free(store: FileSystemBackend, key: str) -> None:
    """A write to ``key``'s shard completes: no descriptor in this process still locks it."""
    run(lambda: store.set(same_shard(key)[0], b"probe"))


@pytest.mark.parametrize("interrupt", INTERRUPTS)
@pytest.mark.parametrize("where", ["write", "replace", "fsync"])
def test_interrupted_write_releases_lock_and_keeps_old_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException], where: str
) -> None:
    """A BaseException from inside a write leaves the old value, no temp file, and no lock."""
    store = FileSystemBackend(tmp_path / "store", fsync=True)
    store.set("k", b"7", ttl=100)
    real = getattr(os, where)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise interrupt()

    ops: list[Callable[[], Any]] = [
        lambda: store.set("k", b"new"),
        lambda: store.set_many([("k", b"new")]),
        lambda: store.replace("k", b"new"),
        lambda: store.replace_many([("k", b"new")], ttl=co.KEEP_TTL),
        lambda: store.incr("k"),
    ]
    for op in ops:
        monkeypatch.setattr(os, where, interrupted)
        with pytest.raises(interrupt):
            run(op)
        monkeypatch.setattr(os, where, real)
        assert store.get("k") == b"7"
        assert not list(entry_path(store, "k").parent.glob(".tmp-*"))
        assert_shard_free(store, "k")
    assert run(lambda: store.replace("k", b"new")) is True


@pytest.mark.parametrize("interrupt", INTERRUPTS)
def test_interrupted_unlock_still_releases_every_shard(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    """A BaseException while closing the first lock of a batch still closes the others."""
    keys = other_shard_keys(4)
    real_close = os.close
    fired: list[int] = []

    def close(fd: int) -> None:
        is_lock = os.readlink(f"/proc/self/fd/{fd}").endswith("/.lock")
        real_close(fd)
        if is_lock and not fired:
            fired.append(fd)
            raise interrupt()

    monkeypatch.setattr(os, "close", close)
    with pytest.raises(interrupt):
        run(lambda: store.set_many([(k, b"v") for k in keys]))
    monkeypatch.undo()
    assert run(lambda: store.get_many(keys)) == [b"v"] * 4
    for key in keys:
        assert_shard_free(store, key)


@pytest.mark.parametrize("interrupt", INTERRUPTS)
def test_interrupt_right_after_flock_releases_the_lock(
    store: FileSystemBackend, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    """A BaseException arriving just after a shard was locked (the worst moment) frees it."""
    keys = other_shard_keys(3)
    store.set_many([(k, b"old") for k in keys])
    real_flock = fcntl.flock
    calls: list[int] = []

    def flock(fd: int, op: int) -> None:
        real_flock(fd, op)
        calls.append(fd)
        if len(calls) == 2:
            raise interrupt()

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(interrupt):
        run(lambda: store.set_many([(k, b"new") for k in keys]))
    monkeypatch.undo()
    assert run(lambda: store.get_many(keys)) == [b"old"] * 3
    for key in keys:
        assert_shard_free(store, key)


# -- item 17: orphaned temporary files and the context manager ---------------------------------

_KILLED_WRITER = """
import os, signal, sys
from cacheorm._filesystem import FileSystemBackend
store = FileSystemBackend(sys.argv[1])
store.set("k", b"old")
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = die
store.set("k", b"never renamed")
"""

_LIVE_WRITER = """
import fcntl, os, sys
shard = sys.argv[1]
fd = os.open(os.path.join(shard, ".lock"), os.O_RDONLY | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
with open(os.path.join(shard, ".tmp-live"), "wb") as f:
    f.write(b"half")
print("locked", flush=True)
sys.stdin.readline()
"""


def _python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True, **kwargs)


def test_orphaned_temp_file_of_a_killed_writer_is_removed_on_open(tmp_path: Path) -> None:
    """A writer SIGKILLed between writing and renaming leaves a temp file; the next
    FileSystemBackend on the directory removes it, and the old value is intact."""
    directory = tmp_path / "store"
    proc = _python(_KILLED_WRITER, str(directory))
    assert proc.wait(timeout=30) == -signal.SIGKILL
    store = FileSystemBackend(directory)
    shard = entry_path(store, "k").parent
    assert list(shard.glob(".tmp-*")) == [], "cleaned at construction"
    assert store.get("k") == b"old"
    (shard / ".tmp-planted").write_bytes(b"x")
    (store.directory / "stray").write_bytes(b"not ours")
    FileSystemBackend(directory)
    assert not (shard / ".tmp-planted").exists()
    assert (store.directory / "stray").exists()


def test_remove_orphans_false_leaves_them_for_purge(tmp_path: Path) -> None:
    """remove_orphans=False skips the scan at construction; purge_expired still cleans."""
    store = FileSystemBackend(tmp_path)
    store.set("k", b"v")
    orphan = entry_path(store, "k").parent / ".tmp-orphan"
    orphan.write_bytes(b"x")
    again = FileSystemBackend(tmp_path, remove_orphans=False)
    assert orphan.exists()
    assert again.purge_expired() == 0
    assert not orphan.exists()


def test_live_writers_temp_file_is_kept_and_open_does_not_wait(tmp_path: Path) -> None:
    """A temp file whose shard another process has locked (a live writer) is left alone,
    construction does not wait for that lock, and the file goes once the lock is free."""
    store = FileSystemBackend(tmp_path / "store")
    store.set("k", b"v")
    shard = entry_path(store, "k").parent
    proc = _python(_LIVE_WRITER, str(shard), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    with proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "locked\n"
            run(lambda: FileSystemBackend(tmp_path / "store"), timeout=5)
            assert (shard / ".tmp-live").exists()
            proc.communicate("done\n", timeout=30)
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:  # pragma: no cover - only on failure
                proc.kill()
    FileSystemBackend(tmp_path / "store")
    assert not (shard / ".tmp-live").exists()


def test_open_skips_shards_it_cannot_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Construction's cleanup is best effort: a shard it cannot clean (a read-only user, a
    symlinked shard) does not stop the store from opening; purge_expired reports it."""
    store = FileSystemBackend(tmp_path / "store")
    store.set("k", b"v")
    orphan = entry_path(store, "k").parent / ".tmp-orphan"
    orphan.write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".tmp-not-ours").write_bytes(b"x")
    (store.directory / "00").symlink_to(outside)

    def deny(path: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "unlink", deny)
    FileSystemBackend(tmp_path / "store")
    assert orphan.exists()
    monkeypatch.undo()
    FileSystemBackend(tmp_path / "store")
    assert not orphan.exists()
    assert (outside / ".tmp-not-ours").exists(), "a symlinked shard is never entered"
    with pytest.raises(BackendError, match="00 is a symbolic link"):
        store.purge_expired()


def test_unlistable_directory_fails_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store directory that cannot be listed is a BackendError at construction."""

    def deny(path: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "scandir", deny)
    with pytest.raises(BackendError, match="cannot list the store directory") as info:
        FileSystemBackend(tmp_path)
    assert isinstance(info.value.__cause__, PermissionError)


def test_is_a_context_manager(tmp_path: Path) -> None:
    """FileSystemBackend is a Closing context manager; the store outlives the block."""
    with FileSystemBackend(tmp_path) as store:
        assert isinstance(store, Closing)
        store.set("k", b"v")
    assert FileSystemBackend(tmp_path).get("k") == b"v"


# -- KEEP_TTL ---------------------------------------------------------------------------------


def test_replace_keep_ttl_keeps_the_expiry(store: FileSystemBackend, clock: FakeClock) -> None:
    """replace(ttl=KEEP_TTL) keeps the old value's expiry; no expiry stays no expiry."""
    store.set("k", b"v1", ttl=10)
    store.set("forever", b"v1")
    clock.advance(4)
    assert store.replace("k", b"v2", ttl=co.KEEP_TTL) is True
    assert store.replace("forever", b"v2", ttl=co.KEEP_TTL) is True
    assert store.replace("missing", b"v2", ttl=co.KEEP_TTL) is False
    assert store.get("missing") is None
    clock.advance(5.999)
    assert store.get("k") == b"v2"
    clock.advance(0.001)
    assert store.get("k") is None
    clock.advance(10**9)
    assert store.get("forever") == b"v2"


def test_replace_many_keep_ttl_keeps_each_keys_expiry(
    store: FileSystemBackend, clock: FakeClock
) -> None:
    """replace_many(ttl=KEEP_TTL) keeps each key's own expiry, and skips absent keys."""
    store.set("a", b"1", ttl=5)
    store.set("b", b"1", ttl=50)
    store.set("c", b"1")
    result = store.replace_many(
        [("a", b"2"), ("b", b"2"), ("c", b"2"), ("d", b"2")], ttl=co.KEEP_TTL
    )
    assert result == [True, True, True, False]
    clock.advance(5)
    assert store.get_many(["a", "b", "c", "d"]) == [None, b"2", b"2", None]
    clock.advance(45)
    assert store.get_many(["a", "b", "c"]) == [None, None, b"2"]


def test_cas_keep_ttl_keeps_the_expiry(store: FileSystemBackend, clock: FakeClock) -> None:
    """cas(ttl=KEEP_TTL) keeps the expiry, persisted for a new instance too."""
    store.set("k", b"v1", ttl=10)
    store.set("forever", b"v1")
    for key in ("k", "forever"):
        got = store.gets(key)
        assert got is not None
        assert store.cas(key, b"v2", got[1], ttl=co.KEEP_TTL) is True
    clock.advance(9)
    again = FileSystemBackend(store.directory, clock=clock)
    got = again.gets("k")
    assert got is not None
    assert got[0] == b"v2"
    assert again.cas("k", b"v3", got[1], ttl=co.KEEP_TTL) is True
    clock.advance(1)
    assert again.get("k") is None
    assert again.get("forever") == b"v2"
    assert again.cas("k", b"v4", got[1], ttl=co.KEEP_TTL) is False


def test_keep_ttl_only_where_the_protocol_allows_it(store: FileSystemBackend) -> None:
    """add, set and incr do not take KEEP_TTL: it is an InvalidTTL there, and nothing is written."""
    for op in (
        lambda: store.add("k", b"v", ttl=co.KEEP_TTL),  # type: ignore[arg-type]
        lambda: store.add_many([("k", b"v")], ttl=co.KEEP_TTL),  # type: ignore[arg-type]
        lambda: store.set("k", b"v", ttl=co.KEEP_TTL),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidTTL):
            op()
    assert store.get("k") is None
