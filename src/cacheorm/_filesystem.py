"""A persistent embedded backend: one file per key in a directory tree.

File names never come from the raw key (keys may hold ``/``, ``..``, NUL or
be hundreds of bytes long): an entry is named after the SHA-256 of its UTF-8
key (lone surrogates passed through) and lives in a shard directory named
after the first two hex digits::

    <directory>/
        3f/                         one shard per first two hex digits
            .lock                   the shard's flock(2) lock file; never removed
            3fa1...9c               an entry: sha256(key).hexdigest()
            .tmp-<32 hex digits>    a write in progress, renamed onto its entry

An entry file is a 44-byte header, the key, then the value::

    offset  size  field
    0       4     magic b"CoFS"
    4       1     format version, 1
    5       1     flags: 1 if the entry expires, 0 if it does not
    6       2     reserved, zero
    8       8     expiry: absolute clock seconds (big-endian float64), 0.0 if none
    16      16    version nonce, random per write: the token of gets/cas
    32      4     key length in bytes (big-endian)
    36      8     value length in bytes (big-endian)
    44      ...   the key, then the value

Writes go to a temporary file in the entry's shard and are renamed onto the
entry, so a reader sees the old file or the new one, never a partial one.
Every check-then-write (and every write, so that a ``cas`` cannot overwrite a
``set`` it did not see) holds an exclusive ``flock`` on the shard's lock file,
which excludes other threads and other processes alike. Reads take no lock.

The directory's contents are not trusted. A shard is opened as a directory
without following a symbolic link, and every file in it is opened relative to
that directory descriptor, without following a link and without blocking; an
entry must then be a regular file whose size is exactly what its header
claims. So a planted FIFO, device, symbolic link or oversized header is a
``BackendError`` naming the key, never a hang, a ``MemoryError`` or a file
created outside the directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from cacheorm._backend import CasToken, Closing
from cacheorm._checks import as_bytes as _as_bytes
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_batch as _check_batch
from cacheorm._checks import check_delta as _check_delta
from cacheorm._checks import check_key as _check_key
from cacheorm._checks import check_ttl as _check_ttl
from cacheorm._errors import BackendError, ConfigurationError
from cacheorm._ttl import KEEP_TTL, BackendTTL

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    # FileSystemBackend() refuses to start without it, so no lock is ever taken.
    fcntl = None  # type: ignore[assignment]

_HAVE_FCNTL = fcntl is not None

__all__ = ["FileSystemBackend"]

_MAGIC = b"CoFS"
_FORMAT_VERSION = 1
_FLAG_EXPIRES = 1
#: magic, version, flags, (2 reserved bytes), expiry, nonce, key length, value length.
_HEADER = struct.Struct(">4sBBxxd16sIQ")
#: What the fast read path compares when a file is shorter than it said: matches nothing.
_NO_HEADER = (b"", 0, 0, 0.0, b"", 0, 0)
_NONCE_SIZE = 16
_LOCK_NAME = ".lock"
#: Starts with a dot, so a temporary file can never be mistaken for an entry.
_TMP_PREFIX = ".tmp-"
#: How much a read asks for first; smaller entries take one read(2).
_FIRST_READ = 16384
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}")
_SHARD_NAME = re.compile(r"[0-9a-f]{2}")
#: What incr accepts as a stored counter: ASCII digits, optionally negative.
_COUNTER = re.compile(rb"-?[0-9]+")
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_S_ISREG = stat.S_ISREG
#: A shard directory: never through a symbolic link (ELOOP or ENOTDIR instead).
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
#: An entry or lock file: never through a link, and a FIFO opens without waiting
#: for a writer (it is then refused by the regular-file check).
_READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC
_LOCK_FLAGS = _READ_FLAGS | os.O_CREAT
#: O_EXCL never follows a link and never opens an existing file.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
#: What open(2) says when the last component is a symbolic link under O_NOFOLLOW
#: (ENOTDIR with O_DIRECTORY on some systems, EMLINK on FreeBSD).
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EMLINK})
#: The default file permissions: only the owner reads the records.
_DEFAULT_MODE = 0o600


class _Slot:
    """Where one key lives: its encoded form, shard, entry file name and path."""

    __slots__ = ("key", "name", "raw", "root", "shard")

    def __init__(self, key: str, raw: bytes, root: str, name: str) -> None:
        self.key = key
        self.raw = raw
        self.root = root
        self.shard = name[:2]
        self.name = name

    @property
    def path(self) -> str:
        """The entry file's path, for messages."""
        return f"{self.root}{os.sep}{self.shard}{os.sep}{self.name}"


class _Header(NamedTuple):
    """The parsed header of an entry file."""

    expires_at: float | None
    nonce: bytes
    value_offset: int
    value_len: int


class _Malformed(ValueError):
    """An entry file's header is not one this module wrote."""


class _CorruptEntry(BackendError):
    """An entry file that cannot be read back (truncated, foreign, another key's, not a file)."""


class _Unsafe(OSError):
    """A shard directory or lock file that is not what this module creates (a link, a FIFO).

    An OSError, so every caller's OSError handling names the key or path.
    """


def _unpack(data: bytes) -> tuple[float | None, bytes, int, int]:
    """Expiry, nonce, key length and value length from a header, or _Malformed."""
    if len(data) < _HEADER.size:
        raise _Malformed(f"truncated header ({len(data)} of {_HEADER.size} bytes)")
    magic, version, flags, expires, nonce, key_len, value_len = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise _Malformed("not a cacheorm entry file (bad magic)")
    if version != _FORMAT_VERSION:
        raise _Malformed(f"unsupported format version {version}")
    if flags & ~_FLAG_EXPIRES:
        raise _Malformed(f"unknown flags {flags:#x}")
    if not flags & _FLAG_EXPIRES:
        return None, nonce, key_len, value_len
    if not math.isfinite(expires):
        raise _Malformed(f"invalid expiry {expires!r}")
    return expires, nonce, key_len, value_len


def _file_kind(mode: int) -> str:
    """What a non-regular file is, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return f"file type {stat.S_IFMT(mode):#o}"


def _release(fds: list[int]) -> None:
    """Close every descriptor in ``fds`` (releasing their locks), emptying the list.

    Even if closing one is interrupted by a BaseException (KeyboardInterrupt,
    a timeout), the rest are still closed before it propagates: a lock fd
    left open would block its shard for every later writer in this process.
    """
    try:
        while fds:
            fd = fds.pop()
            with contextlib.suppress(OSError):
                os.close(fd)
    finally:
        if fds:
            _release(fds)


def _dir_error(path: str, exc: OSError) -> OSError:
    """``exc`` from opening the directory ``path``, as _Unsafe if it is a link or no directory."""
    if exc.errno not in _LINK_ERRNOS:
        return exc
    return _Unsafe(
        exc.errno,
        f"{path} is a symbolic link or not a directory; the store never follows "
        "a link out of its directory",
    )


def _open_dir(path: str) -> int:
    """A descriptor of the directory at ``path``; _Unsafe if it is a link or not a directory."""
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _dir_error(path, exc) from None


def _open_lock(dir_fd: int, shard_dir: str, mode: int) -> int:
    """An fd of the shard's lock file, created with ``mode`` if missing; not yet locked.

    _Unsafe if the lock file is a symbolic link or not a regular file.
    """
    try:
        fd = os.open(_LOCK_NAME, _LOCK_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _LINK_ERRNOS:
            raise
        fd = -1
        kind = "a symbolic link"
    else:
        file_mode = os.fstat(fd).st_mode
        if stat.S_ISREG(file_mode):
            return fd
        os.close(fd)
        kind = _file_kind(file_mode)
    raise _Unsafe(
        errno.EINVAL,
        f"lock file {shard_dir}{os.sep}{_LOCK_NAME} is {kind}, not a regular file; "
        "remove it by hand",
    )


class FileSystemBackend(Closing):
    """A persistent embedded store: one file per key in ``directory``.

    Data outlives the process and is shared by every process (and every
    instance) using the same directory on a local POSIX file system. Writes
    are atomic (temporary file, then rename); add, replace, incr, cas, delete
    and set hold an exclusive ``flock`` on the key's shard, so they are atomic
    across threads and processes. Reads take no lock. Expired entries are
    invisible; they are removed by the next locked operation on the key or by
    :meth:`purge_expired`, never by a reader.

    The store is private by default: directories it creates are ``0o700`` and
    files ``0o600`` (see ``mode``). Its contents are not trusted: a shard
    directory or lock file that is a symbolic link, or a lock file that is not
    a regular file, makes every operation on that shard raise
    :class:`~cacheorm.BackendError`; nothing is ever created, read or removed
    outside ``directory`` through one. An entry path holding something that
    is not a regular file (a FIFO, a socket, a directory, a symbolic link), or
    a file that cannot be read back (truncated, oversized header, foreign, or
    holding another key) raises :class:`~cacheorm.BackendError` naming the key
    and the file; no operation blocks on it. get, gets and incr check the whole
    file; exists, add, replace and cas check its header, key and size.
    ``set`` replaces such a file and ``delete`` removes it (counting it as
    present; a directory is reported instead). A batch that fails part way
    may have applied its earlier pairs. Only POSIX file locks are used, so the
    directory must be on a local file system (not NFS without flock).

    Construction removes temporary files left by writers that died (killed
    mid-write): a writer holds its shard's lock for as long as its temporary
    file exists, so one seen while holding that lock is an orphan. Shards
    whose lock another process holds right now are skipped, never waited for,
    and so are shards that cannot be listed or written (a read-only user).

    Args:
        directory: where the entries live; created, parents too, if missing.
            The path itself is trusted (it may be a symbolic link); what is
            inside it is not.
        clock: a zero-argument callable returning wall-clock seconds, used for
            TTLs; ``time.time`` by default, since expiry times are stored in the
            files and must mean the same thing to the next process.
        fsync: also ``fsync`` each written file and its directory, so a write
            survives a power loss; slower.
        mode: permission bits of the files the store creates (``0o600``, owner
            only, by default; ``0o660`` shares the store with the group).
            Directories it creates get the same bits plus search (``x``)
            wherever read is set. The process umask can still remove bits.
            Existing files and directories keep their permissions.
        remove_orphans: remove temporary files of dead writers now (see
            above). This lists every shard directory: about 2 ms for 1,000
            entries and 80 ms for 50,000 on a local disk. A very large store
            opened often may pass False and run :meth:`purge_expired` from a
            maintenance job instead.

    Raises:
        TypeError: ``directory`` is not a path, ``clock`` is not callable or
            ``mode`` is not an int.
        ConfigurationError: the platform has no ``fcntl`` (not POSIX), or
            ``mode`` is not permission bits that let the owner read and write.
        BackendError: the directory cannot be created or listed.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        clock: Callable[[], float] | None = None,
        fsync: bool = False,
        mode: int = _DEFAULT_MODE,
        remove_orphans: bool = True,
    ) -> None:
        if not _HAVE_FCNTL:
            raise ConfigurationError(
                "FileSystemBackend needs POSIX file locks (fcntl), which this platform lacks"
            )
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or path, not {type(directory).__name__}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, not {clock!r}")
        if isinstance(mode, bool) or not isinstance(mode, int):
            raise TypeError(f"mode must be an int such as 0o600, not {type(mode).__name__}")
        if mode & ~0o777 or mode & 0o600 != 0o600:
            raise ConfigurationError(
                f"FileSystemBackend mode must be permission bits (at most 0o777) that let the "
                f"owner read and write, such as 0o600 or 0o660, not {mode:#o}"
            )
        path = Path(directory).absolute()
        self._mode = mode
        # Search permission wherever read permission is given: r-- -> r-x.
        self._dir_mode = mode | (mode & 0o444) >> 2
        try:
            os.makedirs(path, mode=self._dir_mode, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create the store directory {path}: {exc}", server=str(path)
            ) from exc
        self._directory = path
        self._root = str(path)
        self._shard_dirs = {f"{i:02x}": f"{self._root}{os.sep}{i:02x}" for i in range(256)}
        self._clock: Callable[[], float] = time.time if clock is None else clock
        self._fsync = bool(fsync)
        if remove_orphans:
            self._remove_orphans()

    @property
    def directory(self) -> Path:
        """The absolute path of the store directory."""
        return self._directory

    @property
    def fsync(self) -> bool:
        """Whether writes are flushed to stable storage before they return."""
        return self._fsync

    @property
    def mode(self) -> int:
        """The permission bits of the files this store creates (directories add ``x``)."""
        return self._mode

    def __repr__(self) -> str:
        """The class, its directory and whether it fsyncs."""
        return f"FileSystemBackend(directory={self._root!r}, fsync={self._fsync})"

    # -- locating, reading and writing entries ---------------------------------

    def _locate(self, key: str) -> _Slot:
        raw = key.encode("utf-8", "surrogatepass")
        return _Slot(key, raw, self._root, hashlib.sha256(raw).hexdigest())

    def _corrupt(self, slot: _Slot, reason: object) -> _CorruptEntry:
        return _CorruptEntry(
            f"file {slot.path} for key {slot.key!r} is corrupt: {reason}",
            key=slot.key,
            server=self._root,
        )

    def _os_error(self, action: str, slot: _Slot, exc: OSError) -> BackendError:
        return BackendError(
            f"filesystem backend could not {action} key {slot.key!r} (file {slot.path}): {exc}",
            key=slot.key,
            server=self._root,
        )

    def _parse(self, slot: _Slot, data: bytes, size: int) -> _Header:
        """The header of an entry file of ``size`` bytes whose first bytes are ``data``."""
        try:
            expires_at, nonce, key_len, value_len = _unpack(data)
        except _Malformed as exc:
            raise self._corrupt(slot, exc) from None
        offset = _HEADER.size + key_len
        if key_len != len(slot.raw) or (
            len(data) >= offset and data[_HEADER.size : offset] != slot.raw
        ):
            raise self._corrupt(slot, "it holds another key")
        if len(data) < offset:
            raise self._corrupt(slot, "truncated key")
        # The header's claim is checked against the real size before anything
        # is allocated for it: a planted header claiming a terabyte is corrupt.
        total = offset + value_len
        if total != size:
            if total > size:
                raise self._corrupt(
                    slot,
                    f"truncated value (the header claims {value_len} bytes, the file "
                    f"holds {size - offset})",
                )
            raise self._corrupt(slot, f"{size - total} trailing bytes")
        return _Header(expires_at, nonce, offset, value_len)

    def _shard_fd(self, slot: _Slot, *, check_root: bool) -> int | None:
        """The slot's shard directory, opened for reading; None if it does not exist.

        With ``check_root``, a missing shard whose store directory is gone too
        is an error rather than an absent key.
        """
        path = self._shard_dirs[slot.shard]
        try:
            return os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            if check_root and not os.path.isdir(self._root):
                raise FileNotFoundError(
                    errno.ENOENT, "the store directory has vanished", self._root
                ) from None
            return None
        except OSError as exc:
            raise _dir_error(path, exc) from None

    def _read(self, slot: _Slot, dir_fd: int, *, value: bool) -> tuple[_Header, bytes] | None:
        """The entry's header and (if ``value``) its value, live or not; None if no file."""
        try:
            fd = os.open(slot.name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                raise self._corrupt(slot, "it is a symbolic link, not a regular file") from None
            if exc.errno == errno.ENXIO:  # a socket: open(2) refuses it
                raise self._corrupt(slot, "it is a socket, not a regular file") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._corrupt(slot, f"it is {_file_kind(info.st_mode)}, not a regular file")
            size = info.st_size
            want = _HEADER.size + len(slot.raw)
            data = os.read(fd, min(size, max(want, _FIRST_READ)) if value else want)
            header = self._parse(slot, data, size)
            if not value:
                return header, b""
            if len(data) < size:
                data = self._read_rest(slot, fd, data, header.value_len)
            return header, data[header.value_offset :]
        finally:
            os.close(fd)

    def _read_rest(self, slot: _Slot, fd: int, data: bytes, value_len: int) -> bytes:
        """``data`` completed to the whole file (its size already checked against the header)."""
        parts = [data]
        missing = _HEADER.size + len(slot.raw) + value_len - len(data)
        try:
            while missing:
                chunk = os.read(fd, missing)
                if not chunk:  # cut short in place by someone else: writers never do
                    raise self._corrupt(slot, f"truncated value ({missing} bytes missing)")
                parts.append(chunk)
                missing -= len(chunk)
            return b"".join(parts)
        except MemoryError:
            raise BackendError(
                f"filesystem backend could not read key {slot.key!r} (file {slot.path}): "
                f"its {value_len}-byte value does not fit in memory",
                key=slot.key,
                server=self._root,
            ) from None

    @staticmethod
    def _live(header: _Header, now: float) -> bool:
        return header.expires_at is None or header.expires_at > now

    def _write(
        self,
        slot: _Slot,
        dir_fd: int,
        value: bytes,
        expires_at: float | None,
        nonce: bytes | None = None,
    ) -> bytes:
        """Atomically replace the entry file; its version nonce. Caller holds the lock.

        A new nonce unless ``nonce`` is given (a touch keeps the version: the value is the same).
        """
        if nonce is None:
            nonce = os.urandom(_NONCE_SIZE)
            tmp = f"{_TMP_PREFIX}{nonce.hex()}"
        else:
            tmp = f"{_TMP_PREFIX}{os.urandom(_NONCE_SIZE).hex()}"
        header = _HEADER.pack(
            _MAGIC,
            _FORMAT_VERSION,
            0 if expires_at is None else _FLAG_EXPIRES,
            0.0 if expires_at is None else expires_at,
            nonce,
            len(slot.raw),
            len(value),
        )
        fd = os.open(tmp, _TMP_FLAGS, self._mode, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(b"".join((header, slot.raw, value)))
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, slot.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            # Whatever interrupted the write (an OSError, KeyboardInterrupt, a
            # timeout), the entry is untouched; take the half-written file away.
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if self._fsync:
            os.fsync(dir_fd)
        return nonce

    def _unlink(self, name: str, dir_fd: int) -> None:
        """Remove a file if it is there. Caller holds its shard's lock."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        if self._fsync:
            os.fsync(dir_fd)

    # -- locks -------------------------------------------------------------------

    def _lock_shard(self, shard: str, held: list[int], *, create: bool = True) -> int:
        """Lock ``shard`` exclusively; its directory fd. Every fd opened is added to ``held``.

        The lock fd joins ``held`` before flock(2) is called, so whatever is
        raised afterwards, the caller's :func:`_release` frees the lock.
        """
        shard_dir = f"{self._root}{os.sep}{shard}"
        try:
            dir_fd = _open_dir(shard_dir)
        except FileNotFoundError:
            if not create:
                raise
            # mkdir, not makedirs: a vanished store directory is an error.
            with contextlib.suppress(FileExistsError):
                os.mkdir(shard_dir, self._dir_mode)
            dir_fd = _open_dir(shard_dir)
        held.append(dir_fd)
        held.append(_open_lock(dir_fd, shard_dir, self._mode))
        assert fcntl is not None  # checked by __init__
        fcntl.flock(held[-1], fcntl.LOCK_EX)
        return dir_fd

    def _lock(self, slots: Sequence[_Slot], held: list[int]) -> dict[str, int]:
        """Lock the shards of ``slots`` in sorted order (so lockers never deadlock).

        Returns each shard's directory fd; every fd opened is in ``held``.
        """
        dirs: dict[str, int] = {}
        by_shard = {slot.shard: slot for slot in slots}
        for shard in sorted(by_shard):
            try:
                dirs[shard] = self._lock_shard(shard, held)
            except OSError as exc:
                raise self._os_error("lock the shard of", by_shard[shard], exc) from exc
        return dirs

    # -- the Backend protocol -------------------------------------------------------

    def _read_unlocked(self, slot: _Slot, *, value: bool) -> tuple[_Header, bytes] | None:
        """A lock-free read of one key, reporting every problem (the careful path)."""
        try:
            dir_fd = self._shard_fd(slot, check_root=True)
            if dir_fd is None:
                return None
            try:
                return self._read(slot, dir_fd, value=value)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise self._os_error("read", slot, exc) from exc

    def _fetch(self, key: str, value: bool) -> tuple[float | None, bytes, bytes] | None:
        """Expiry, nonce and (if ``value``) value of ``key``, live or not; None if absent.

        The lock-free read of get, gets, exists and get_many: the same checks
        as :meth:`_read_unlocked`, in straight-line code for an entry that
        passes them; anything unusual is handed to the careful path, which
        says what is wrong.
        """
        raw = key.encode("utf-8", "surrogatepass")
        name = hashlib.sha256(raw).hexdigest()
        try:
            dir_fd = os.open(self._shard_dirs[name[:2]], _DIR_FLAGS)
        except OSError:  # no shard yet, a vanished store, a link: let the careful path tell
            found = self._read_unlocked(self._locate(key), value=value)
            return None if found is None else (found[0].expires_at, found[0].nonce, found[1])
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError:
            fd = -1
        finally:
            os.close(dir_fd)
        if fd >= 0:
            try:
                info = os.fstat(fd)
                size = info.st_size
                want = _HEADER.size + len(raw)
                if _S_ISREG(info.st_mode) and size >= want:
                    data = os.read(fd, size if value and size <= _FIRST_READ else want)
                    header = _HEADER.unpack_from(data) if len(data) >= want else _NO_HEADER
                    magic, version, flags, expires, nonce, key_len, value_len = header
                    if (
                        magic == _MAGIC
                        and version == _FORMAT_VERSION
                        and want + value_len == size
                        and key_len == len(raw)
                        and data[_HEADER.size : want] == raw
                        and (flags == 0 or (flags == _FLAG_EXPIRES and math.isfinite(expires)))
                    ):
                        if not value:
                            return (expires if flags else None), nonce, b""
                        if len(data) == size:
                            return (expires if flags else None), nonce, data[want:]
            finally:
                os.close(fd)
        # A large value, or something wrong: the careful path reads it again and says what.
        found = self._read_unlocked(self._locate(key), value=value)
        return None if found is None else (found[0].expires_at, found[0].nonce, found[1])

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired.

        Raises:
            BackendError: the file cannot be read or is corrupt.
        """
        found = self._fetch(_check_key(key), True)
        if found is None or (found[0] is not None and found[0] <= self._clock()):
            return None
        return found[2]

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``, in the same order, None where absent or expired."""
        for key in keys:
            _check_key(key)
        now = self._clock()
        result: list[bytes | None] = []
        for key in keys:
            found = self._fetch(key, True)
            if found is None or (found[0] is not None and found[0] <= now):
                result.append(None)
            else:
                result.append(found[2])
        return result

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and TTL it had.

        Raises:
            TypeError: ``value`` is not bytes, bytearray or memoryview.
            BackendError: the file could not be written; the old value is intact.
        """
        data = _as_bytes(_check_key(key), value)
        _check_ttl(ttl)
        self._set_all([(self._locate(key), data)], ttl)

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        """Store every ``(key, value)`` pair, in order (the last of duplicates wins).

        Nothing is stored if a value is not bytes.
        """
        pairs = _as_items(items)
        _check_ttl(ttl)
        self._set_all([(self._locate(key), value) for key, value in pairs], ttl)

    def _set_all(self, pairs: list[tuple[_Slot, bytes]], ttl: float | None) -> None:
        held: list[int] = []
        try:
            dirs = self._lock([slot for slot, _ in pairs], held)
            now = self._clock()
            expires_at = None if ttl is None else now + ttl
            for slot, value in pairs:
                try:
                    self._write(slot, dirs[slot.shard], value, expires_at)
                except OSError as exc:
                    raise self._os_error("write", slot, exc) from exc
        finally:
            _release(held)

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent or expired; True if stored."""
        _check_ttl(ttl)
        return self._write_if([(_check_key(key), _as_bytes(key, value))], ttl, present=False)[0]

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order; a later pair sees earlier ones."""
        _check_ttl(ttl)
        return self._write_if(_as_items(items), ttl, present=False)

    def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` holds a live value; True if stored.

        With ``ttl=KEEP_TTL`` the new value keeps the old one's expiry time
        (read from its header under the lock), or its lack of one.
        """
        if ttl is not KEEP_TTL:
            _check_ttl(ttl)
        return self._write_if([(_check_key(key), _as_bytes(key, value))], ttl, present=True)[0]

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order; ``KEEP_TTL`` keeps each key's own expiry."""
        if ttl is not KEEP_TTL:
            _check_ttl(ttl)
        return self._write_if(_as_items(items), ttl, present=True)

    def _write_if(
        self, pairs: list[tuple[str, bytes]], ttl: BackendTTL, *, present: bool
    ) -> list[bool]:
        """Store each pair whose key's liveness equals ``present``, under the shard locks."""
        slots = [(self._locate(key), value) for key, value in pairs]
        result: list[bool] = []
        held: list[int] = []
        try:
            dirs = self._lock([slot for slot, _ in slots], held)
            now = self._clock()
            keep = ttl is KEEP_TTL
            expires_at = None if ttl is None or ttl is KEEP_TTL else now + ttl
            for slot, value in slots:
                dir_fd = dirs[slot.shard]
                try:
                    found = self._read(slot, dir_fd, value=False)
                    live = found is not None and self._live(found[0], now)
                    ok = live is present
                    if ok:
                        # ok with a file found means a replace: keep its expiry if asked.
                        kept = found[0].expires_at if keep and found is not None else expires_at
                        self._write(slot, dir_fd, value, kept)
                    elif found is not None and not live:
                        self._unlink(slot.name, dir_fd)
                except OSError as exc:
                    raise self._os_error("add" if not present else "replace", slot, exc) from exc
                result.append(ok)
        finally:
            _release(held)
        return result

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it held a live value (or a corrupt file)."""
        return self.delete_many([_check_key(key)]) == 1

    def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys``; the number that held a live value (or a corrupt file)."""
        slots = [self._locate(_check_key(key)) for key in keys]
        removed = 0
        held: list[int] = []
        try:
            dirs = self._lock(slots, held)
            now = self._clock()
            for slot in slots:
                dir_fd = dirs[slot.shard]
                try:
                    try:
                        found = self._read(slot, dir_fd, value=False)
                    except _CorruptEntry:
                        live = True
                    else:
                        if found is None:
                            continue
                        live = self._live(found[0], now)
                    self._unlink(slot.name, dir_fd)
                except OSError as exc:
                    raise self._os_error("delete", slot, exc) from exc
                removed += live
        finally:
            _release(held)
        return removed

    def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value; reads only the file's header."""
        found = self._fetch(_check_key(key), False)
        return found is not None and (found[0] is None or found[0] > self._clock())

    def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key``, starting from 0; the new value.

        The counter is stored as ASCII decimal digits and keeps the key's TTL;
        a missing or expired key starts again at 0 with no TTL.

        Raises:
            BackendError: the stored value is not an ASCII integer.
        """
        _check_key(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"incr delta must be an int, not {type(delta).__name__}")
        slot = self._locate(key)
        held: list[int] = []
        try:
            dir_fd = self._lock([slot], held)[slot.shard]
            try:
                found = self._read(slot, dir_fd, value=True)
                if found is None or not self._live(found[0], self._clock()):
                    current, expires_at = 0, None
                else:
                    header, stored = found
                    if _COUNTER.fullmatch(stored) is None:
                        raise BackendError(
                            f"cannot incr key {key!r}: its value is not an ASCII integer",
                            key=key,
                            server=self._root,
                        )
                    try:
                        current = int(stored)
                    except ValueError:  # more digits than int() accepts
                        raise BackendError(
                            f"cannot incr key {key!r}: its value is too long an integer",
                            key=key,
                            server=self._root,
                        ) from None
                    expires_at = header.expires_at
                result = current + delta
                self._write(slot, dir_fd, str(result).encode("ascii"), expires_at)
            except OSError as exc:
                raise self._os_error("incr", slot, exc) from exc
        finally:
            _release(held)
        return result

    def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and its version nonce (bytes) for :meth:`cas`, or None if absent."""
        found = self._fetch(_check_key(key), True)
        if found is None or (found[0] is not None and found[0] <= self._clock()):
            return None
        return found[2], found[1]

    def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` is live and unwritten since ``gets`` gave ``token``.

        With ``ttl=KEEP_TTL`` the new value keeps the old one's expiry time.
        """
        data = _as_bytes(_check_key(key), value)
        if ttl is not KEEP_TTL:
            _check_ttl(ttl)
        if type(token) is not bytes:
            return False
        slot = self._locate(key)
        held: list[int] = []
        try:
            dir_fd = self._lock([slot], held)[slot.shard]
            try:
                found = self._read(slot, dir_fd, value=False)
                now = self._clock()
                if found is None:
                    return False
                if not self._live(found[0], now):
                    self._unlink(slot.name, dir_fd)
                    return False
                if found[0].nonce != token:
                    return False
                if ttl is KEEP_TTL:
                    expires_at = found[0].expires_at
                else:
                    expires_at = None if ttl is None else now + ttl
                self._write(slot, dir_fd, data, expires_at)
            except OSError as exc:
                raise self._os_error("cas", slot, exc) from exc
        finally:
            _release(held)
        return True

    def close(self) -> None:
        """Do nothing: every operation opens and closes its own files. The store stays usable."""

    # -- optional capabilities: TTLBackend, CounterBackend, ScanBackend -------------

    def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give the live value under ``key`` a new TTL (None: no expiry); True if it existed."""
        return self.touch_many([key], ttl)[0]

    def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key, under the shard locks: the file is rewritten with the new
        expiry, its value and version (the ``gets`` token) unchanged."""
        slots = [self._locate(_check_key(key)) for key in keys]
        _check_ttl(ttl)
        result: list[bool] = []
        held: list[int] = []
        try:
            dirs = self._lock(slots, held)
            now = self._clock()
            expires_at = None if ttl is None else now + ttl
            for slot in slots:
                dir_fd = dirs[slot.shard]
                try:
                    found = self._read(slot, dir_fd, value=True)
                    live = found is not None and self._live(found[0], now)
                    if found is not None and live:
                        self._write(slot, dir_fd, found[1], expires_at, found[0].nonce)
                    elif found is not None:
                        self._unlink(slot.name, dir_fd)
                except OSError as exc:
                    raise self._os_error("touch", slot, exc) from exc
                result.append(live)
        finally:
            _release(held)
        return result

    def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left, from its header; ``math.inf`` if none, None if absent."""
        found = self._fetch(_check_key(key), False)
        if found is None:
            return None
        now = self._clock()
        if found[0] is None:
            return math.inf
        return found[0] - now if found[0] > now else None

    def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to the counter under ``key``, never below 0, under its shard lock.

        An absent (or expired) counter starts at 0 with ``ttl``; an existing
        one keeps its expiry.

        Raises:
            BackendError: the stored value is not an ASCII integer.
        """
        _check_key(key)
        _check_delta(delta)
        _check_ttl(ttl)
        slot = self._locate(key)
        held: list[int] = []
        try:
            dir_fd = self._lock([slot], held)[slot.shard]
            try:
                found = self._read(slot, dir_fd, value=True)
                now = self._clock()
                if found is None or not self._live(found[0], now):
                    current, expires_at = 0, (None if ttl is None else now + ttl)
                else:
                    current = self._counter_value(key, found[1])
                    expires_at = found[0].expires_at
                result = max(0, current + delta)
                self._write(slot, dir_fd, str(result).encode("ascii"), expires_at)
            except OSError as exc:
                raise self._os_error("count with", slot, exc) from exc
        finally:
            _release(held)
        return result

    def _counter_value(self, key: str, stored: bytes) -> int:
        if _COUNTER.fullmatch(stored) is None:
            raise BackendError(
                f"cannot count with key {key!r}: its value is not an ASCII integer",
                key=key,
                server=self._root,
            )
        try:
            return int(stored)
        except ValueError:  # more digits than int() accepts
            raise BackendError(
                f"cannot count with key {key!r}: its value is too long an integer",
                key=key,
                server=self._root,
            ) from None

    def scan(self, prefix: str, /, batch: int = 500) -> Iterator[list[str]]:
        """The live keys starting with ``prefix``, ``batch`` at a time.

        Lists one shard directory at a time and reads each entry's header and
        key (not its value), without locks. Memory holds one shard's file
        names and one batch. Files that are not entries this store wrote
        (malformed, links, temporary files) are left out; reading the key
        reports them.
        """
        _check_key(prefix)
        _check_batch(batch)
        return self._scan(prefix.encode("utf-8", "surrogatepass"), batch)

    def _scan(self, prefix: bytes, batch: int) -> Iterator[list[str]]:
        keys: list[str] = []
        try:
            shards = self._shards()
        except OSError as exc:
            raise BackendError(
                f"filesystem backend could not list {self._root}: {exc}", server=self._root
            ) from exc
        for shard in shards:
            path = f"{self._root}{os.sep}{shard}"
            try:
                dir_fd = _open_dir(path)
            except OSError:
                continue  # removed since listed, or not a real directory: no entries of ours
            try:
                names = [n for n in os.listdir(dir_fd) if _ENTRY_NAME.fullmatch(n)]
                now = self._clock()
                for name in names:
                    key = self._entry_key(name, dir_fd, prefix, now)
                    if key is not None:
                        keys.append(key)
                        if len(keys) >= batch:
                            yield keys
                            keys = []
            except OSError as exc:
                raise BackendError(
                    f"filesystem backend could not scan {path}: {exc}", server=self._root
                ) from exc
            finally:
                os.close(dir_fd)
        if keys:
            yield keys

    @staticmethod
    def _entry_key(name: str, dir_fd: int, prefix: bytes, now: float) -> str | None:
        """The key of entry file ``name`` if it is live and starts with ``prefix``."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            return None  # gone since listed, a link or a socket: not an entry
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, _FIRST_READ)
            expires_at, _, key_len, _ = _unpack(data)
            if len(data) < _HEADER.size + key_len:
                data += os.read(fd, _HEADER.size + key_len - len(data))
            raw = data[_HEADER.size : _HEADER.size + key_len]
        except _Malformed:
            return None
        finally:
            os.close(fd)
        if len(raw) != key_len or not raw.startswith(prefix):
            return None
        if hashlib.sha256(raw).hexdigest() != name:
            return None  # not where this key lives: a copied or planted file
        if expires_at is not None and expires_at <= now:
            return None
        return raw.decode("utf-8", "surrogatepass")

    # -- extras ------------------------------------------------------------------------

    def _shards(self) -> list[str]:
        """The names of the shard directories (not checked yet: they may be links)."""
        with os.scandir(self._root) as entries:
            return sorted(e.name for e in entries if _SHARD_NAME.fullmatch(e.name))

    def _remove_orphans(self) -> None:
        """Best-effort removal of temporary files left by dead writers, at construction.

        A writer holds its shard's lock for as long as its temporary file
        exists, so a temporary file seen while holding that lock is an orphan.
        The lock is only tried (LOCK_NB): a shard busy now is skipped, as is
        one that cannot be listed or locked or is not a real directory;
        :meth:`purge_expired` cleans those and reports its errors.
        """
        try:
            shards = self._shards()
        except OSError as exc:
            raise BackendError(
                f"cannot list the store directory {self._root}: {exc}", server=self._root
            ) from exc
        for shard in shards:
            held: list[int] = []
            try:
                dir_fd = _open_dir(f"{self._root}{os.sep}{shard}")
                held.append(dir_fd)
                names = [n for n in os.listdir(dir_fd) if n.startswith(_TMP_PREFIX)]
                if not names:
                    continue
                held.append(_open_lock(dir_fd, f"{self._root}{os.sep}{shard}", self._mode))
                assert fcntl is not None  # checked by __init__
                fcntl.flock(held[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
                for name in names:
                    self._unlink(name, dir_fd)
            except OSError:
                continue  # busy, unreadable or not ours: left for purge_expired()
            finally:
                _release(held)

    def _sweep(self, action: str, *, everything: bool) -> int:
        """Under each shard's lock, remove orphaned temporary files and expired entries
        (every entry if ``everything``); the number of entries removed.

        A shard that is a symbolic link or not a directory is never entered;
        the others are swept first, then it is reported.
        """
        removed = 0
        path = self._root
        refused: list[str] = []
        try:
            for shard in self._shards():
                shard_dir = path = f"{self._root}{os.sep}{shard}"
                held: list[int] = []
                try:
                    try:
                        dir_fd = self._lock_shard(shard, held, create=False)
                    except _Unsafe as exc:
                        refused.append(str(exc))
                        continue
                    except FileNotFoundError:  # removed since it was listed
                        continue
                    now = self._clock()
                    for name in os.listdir(dir_fd):
                        path = f"{shard_dir}{os.sep}{name}"
                        if name.startswith(_TMP_PREFIX):
                            # Writers hold this lock while their temporary file exists,
                            # so one seen now was left by a writer that died.
                            self._unlink(name, dir_fd)
                        elif _ENTRY_NAME.fullmatch(name) and (
                            everything or self._expired(name, dir_fd, now)
                        ):
                            self._unlink(name, dir_fd)
                            removed += 1
                finally:
                    _release(held)
        except OSError as exc:
            raise BackendError(
                f"filesystem backend could not {action} (at {path}): {exc}", server=self._root
            ) from exc
        if refused:
            raise BackendError(
                f"filesystem backend could not {action} entirely: " + "; ".join(refused),
                server=self._root,
            )
        return removed

    @staticmethod
    def _expired(name: str, dir_fd: int, now: float) -> bool:
        """Whether the entry file ``name`` has expired; False if malformed, not a file or gone."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            # Gone since listed, a symbolic link, or a socket: not an expired entry.
            if exc.errno in _LINK_ERRNOS or exc.errno in (errno.ENOENT, errno.ENXIO):
                return False
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            expires_at = _unpack(os.read(fd, _HEADER.size))[0]
        except _Malformed:
            return False
        finally:
            os.close(fd)
        return expires_at is not None and expires_at <= now

    def purge_expired(self) -> int:
        """Remove expired entries (and temporary files left by crashed writers).

        Malformed files and anything that is not a regular file are left alone.
        Each shard is swept under its lock.

        Returns:
            The number of expired entries removed.

        Raises:
            BackendError: the directory could not be listed or a file removed,
                or a shard is a symbolic link or not a directory (the other
                shards are swept first).
        """
        return self._sweep("purge expired entries", everything=False)

    def clear(self) -> None:
        """Remove every entry; shard directories and their lock files stay.

        Raises:
            BackendError: the directory could not be listed or a file removed,
                or a shard is a symbolic link or not a directory (the other
                shards are cleared first).
        """
        self._sweep("clear the store", everything=True)
