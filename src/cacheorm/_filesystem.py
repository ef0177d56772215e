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
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from cacheorm._backend import CasToken
from cacheorm._checks import as_bytes as _as_bytes
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_key as _check_key
from cacheorm._checks import check_ttl as _check_ttl
from cacheorm._errors import BackendError, ConfigurationError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    _HAVE_FCNTL = False
else:
    _HAVE_FCNTL = True

__all__ = ["FileSystemBackend"]

_MAGIC = b"CoFS"
_FORMAT_VERSION = 1
_FLAG_EXPIRES = 1
#: magic, version, flags, (2 reserved bytes), expiry, nonce, key length, value length.
_HEADER = struct.Struct(">4sBBxxd16sIQ")
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


class _Slot:
    """Where one key lives: its encoded form, shard and entry file path."""

    __slots__ = ("key", "path", "raw", "shard")

    def __init__(self, key: str, raw: bytes, shard: str, path: str) -> None:
        self.key = key
        self.raw = raw
        self.shard = shard
        self.path = path


class _Header(NamedTuple):
    """The parsed header of an entry file."""

    expires_at: float | None
    nonce: bytes
    value_offset: int
    value_len: int


class _Malformed(ValueError):
    """An entry file's header is not one this module wrote."""


class _CorruptEntry(BackendError):
    """An entry file that cannot be read back (truncated, foreign, another key's)."""


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


class FileSystemBackend:
    """A persistent embedded store: one file per key in ``directory``.

    Data outlives the process and is shared by every process (and every
    instance) using the same directory on a local POSIX file system. Writes
    are atomic (temporary file, then rename); add, replace, incr, cas, delete
    and set hold an exclusive ``flock`` on the key's shard, so they are atomic
    across threads and processes. Reads take no lock. Expired entries are
    invisible; they are removed by the next locked operation on the key or by
    :meth:`purge_expired`, never by a reader.

    A file that cannot be read back (truncated, foreign, or holding another
    key) raises :class:`~cacheorm.BackendError` naming the key and the file:
    get, gets and incr check the whole file; exists, add, replace and cas
    check its header and key only. ``set`` overwrites such a file and
    ``delete`` removes it (counting it as present). A batch that fails part
    way may have applied its earlier pairs. Only POSIX file locks are used,
    so the directory must be on a local file system (not NFS without flock).

    Args:
        directory: where the entries live; created, parents too, if missing.
        clock: a zero-argument callable returning wall-clock seconds, used for
            TTLs; ``time.time`` by default, since expiry times are stored in the
            files and must mean the same thing to the next process.
        fsync: also ``fsync`` each written file and its directory, so a write
            survives a power loss; slower.

    Raises:
        TypeError: ``directory`` is not a path or ``clock`` is not callable.
        BackendError: the directory cannot be created.
        ConfigurationError: the platform has no ``fcntl`` (not POSIX).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        clock: Callable[[], float] | None = None,
        fsync: bool = False,
    ) -> None:
        if not _HAVE_FCNTL:
            raise ConfigurationError(
                "FileSystemBackend needs POSIX file locks (fcntl), which this platform lacks"
            )
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or path, not {type(directory).__name__}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, not {clock!r}")
        path = Path(directory).absolute()
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create the store directory {path}: {exc}", server=str(path)
            ) from exc
        self._directory = path
        self._root = str(path)
        self._clock: Callable[[], float] = time.time if clock is None else clock
        self._fsync = bool(fsync)

    @property
    def directory(self) -> Path:
        """The absolute path of the store directory."""
        return self._directory

    @property
    def fsync(self) -> bool:
        """Whether writes are flushed to stable storage before they return."""
        return self._fsync

    def __repr__(self) -> str:
        """The class, its directory and whether it fsyncs."""
        return f"FileSystemBackend(directory={self._root!r}, fsync={self._fsync})"

    # -- locating, reading and writing entries ---------------------------------

    def _locate(self, key: str) -> _Slot:
        raw = key.encode("utf-8", "surrogatepass")
        name = hashlib.sha256(raw).hexdigest()
        shard = name[:2]
        return _Slot(key, raw, shard, f"{self._root}{os.sep}{shard}{os.sep}{name}")

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

    def _parse(self, slot: _Slot, data: bytes) -> _Header:
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
        return _Header(expires_at, nonce, offset, value_len)

    def _read(self, slot: _Slot, *, value: bool, check_root: bool) -> tuple[_Header, bytes] | None:
        """The entry's header and (if ``value``) its value, live or not; None if no file.

        With ``check_root``, a missing file whose store directory is gone too is
        an error rather than an absent key.
        """
        try:
            fd = os.open(slot.path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            if check_root and not os.path.isdir(self._root):
                raise FileNotFoundError(
                    errno.ENOENT, "the store directory has vanished", self._root
                ) from None
            return None
        try:
            want = _HEADER.size + len(slot.raw)
            data = os.read(fd, max(want, _FIRST_READ) if value else want)
            header = self._parse(slot, data)
            if not value:
                return header, b""
            total = header.value_offset + header.value_len
            if len(data) >= total:
                if len(data) > total:
                    raise self._corrupt(slot, f"{len(data) - total} trailing bytes")
                return header, data[header.value_offset :]
            parts = [data[header.value_offset :]]
            missing = total - len(data)
            while missing:
                chunk = os.read(fd, missing)
                if not chunk:
                    raise self._corrupt(
                        slot,
                        f"truncated value ({header.value_len - missing} of "
                        f"{header.value_len} bytes)",
                    )
                parts.append(chunk)
                missing -= len(chunk)
            return header, b"".join(parts)
        finally:
            os.close(fd)

    @staticmethod
    def _live(header: _Header, now: float) -> bool:
        return header.expires_at is None or header.expires_at > now

    def _write(self, slot: _Slot, value: bytes, expires_at: float | None) -> bytes:
        """Atomically replace the entry file; the new version nonce. Caller holds the lock."""
        nonce = os.urandom(_NONCE_SIZE)
        header = _HEADER.pack(
            _MAGIC,
            _FORMAT_VERSION,
            0 if expires_at is None else _FLAG_EXPIRES,
            0.0 if expires_at is None else expires_at,
            nonce,
            len(slot.raw),
            len(value),
        )
        shard_dir = f"{self._root}{os.sep}{slot.shard}"
        tmp = f"{shard_dir}{os.sep}{_TMP_PREFIX}{nonce.hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o666)
        try:
            try:
                view = memoryview(b"".join((header, slot.raw, value)))
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, slot.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fsync:
            self._sync_dir(shard_dir)
        return nonce

    def _unlink(self, path: str) -> None:
        """Remove a file if it is there. Caller holds its shard's lock."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if self._fsync:
            self._sync_dir(os.path.dirname(path))

    @staticmethod
    def _sync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- locks -------------------------------------------------------------------

    def _lock_shard(self, shard: str) -> int:
        """An fd holding the shard's exclusive lock (released by closing it)."""
        shard_dir = f"{self._root}{os.sep}{shard}"
        lock_path = f"{shard_dir}{os.sep}{_LOCK_NAME}"
        flags = os.O_RDONLY | os.O_CREAT | _O_CLOEXEC
        try:
            fd = os.open(lock_path, flags, 0o666)
        except FileNotFoundError:
            # mkdir, not makedirs: a vanished store directory is an error.
            with contextlib.suppress(FileExistsError):
                os.mkdir(shard_dir)
            fd = os.open(lock_path, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _lock(self, slots: Sequence[_Slot]) -> list[int]:
        """Lock the shards of ``slots`` in sorted order (so lockers never deadlock)."""
        fds: list[int] = []
        by_shard = {slot.shard: slot for slot in slots}
        try:
            for shard in sorted(by_shard):
                try:
                    fds.append(self._lock_shard(shard))
                except OSError as exc:
                    raise self._os_error("lock the shard of", by_shard[shard], exc) from exc
        except BaseException:
            self._unlock(fds)
            raise
        return fds

    @staticmethod
    def _unlock(fds: list[int]) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the Backend protocol -------------------------------------------------------

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired.

        Raises:
            BackendError: the file cannot be read or is corrupt.
        """
        slot = self._locate(_check_key(key))
        try:
            found = self._read(slot, value=True, check_root=True)
        except OSError as exc:
            raise self._os_error("read", slot, exc) from exc
        if found is None or not self._live(found[0], self._clock()):
            return None
        return found[1]

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``, in the same order, None where absent or expired."""
        slots = [self._locate(_check_key(key)) for key in keys]
        now = self._clock()
        result: list[bytes | None] = []
        for slot in slots:
            try:
                found = self._read(slot, value=True, check_root=not result)
            except OSError as exc:
                raise self._os_error("read", slot, exc) from exc
            result.append(None if found is None or not self._live(found[0], now) else found[1])
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
        fds = self._lock([slot for slot, _ in pairs])
        try:
            now = self._clock()
            expires_at = None if ttl is None else now + ttl
            for slot, value in pairs:
                try:
                    self._write(slot, value, expires_at)
                except OSError as exc:
                    raise self._os_error("write", slot, exc) from exc
        finally:
            self._unlock(fds)

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent or expired; True if stored."""
        return self._write_if([(_check_key(key), _as_bytes(key, value))], ttl, present=False)[0]

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order; a later pair sees earlier ones."""
        return self._write_if(_as_items(items), ttl, present=False)

    def replace(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` holds a live value; True if stored."""
        return self._write_if([(_check_key(key), _as_bytes(key, value))], ttl, present=True)[0]

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``replace`` for each pair, in order."""
        return self._write_if(_as_items(items), ttl, present=True)

    def _write_if(
        self, pairs: list[tuple[str, bytes]], ttl: float | None, *, present: bool
    ) -> list[bool]:
        """Store each pair whose key's liveness equals ``present``, under the shard locks."""
        _check_ttl(ttl)
        slots = [(self._locate(key), value) for key, value in pairs]
        result: list[bool] = []
        fds = self._lock([slot for slot, _ in slots])
        try:
            now = self._clock()
            expires_at = None if ttl is None else now + ttl
            for slot, value in slots:
                try:
                    found = self._read(slot, value=False, check_root=False)
                    live = found is not None and self._live(found[0], now)
                    ok = live is present
                    if ok:
                        self._write(slot, value, expires_at)
                    elif found is not None and not live:
                        self._unlink(slot.path)
                except OSError as exc:
                    raise self._os_error("add" if not present else "replace", slot, exc) from exc
                result.append(ok)
        finally:
            self._unlock(fds)
        return result

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it held a live value (or a corrupt file)."""
        return self.delete_many([_check_key(key)]) == 1

    def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys``; the number that held a live value (or a corrupt file)."""
        slots = [self._locate(_check_key(key)) for key in keys]
        removed = 0
        fds = self._lock(slots)
        try:
            now = self._clock()
            for slot in slots:
                try:
                    try:
                        found = self._read(slot, value=False, check_root=False)
                    except _CorruptEntry:
                        live = True
                    else:
                        if found is None:
                            continue
                        live = self._live(found[0], now)
                    self._unlink(slot.path)
                except OSError as exc:
                    raise self._os_error("delete", slot, exc) from exc
                removed += live
        finally:
            self._unlock(fds)
        return removed

    def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value; reads only the file's header."""
        slot = self._locate(_check_key(key))
        try:
            found = self._read(slot, value=False, check_root=True)
        except OSError as exc:
            raise self._os_error("read", slot, exc) from exc
        return found is not None and self._live(found[0], self._clock())

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
        fds = self._lock([slot])
        try:
            try:
                found = self._read(slot, value=True, check_root=False)
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
                self._write(slot, str(result).encode("ascii"), expires_at)
            except OSError as exc:
                raise self._os_error("incr", slot, exc) from exc
        finally:
            self._unlock(fds)
        return result

    def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and its version nonce (bytes) for :meth:`cas`, or None if absent."""
        slot = self._locate(_check_key(key))
        try:
            found = self._read(slot, value=True, check_root=True)
        except OSError as exc:
            raise self._os_error("read", slot, exc) from exc
        if found is None or not self._live(found[0], self._clock()):
            return None
        return found[1], found[0].nonce

    def cas(self, key: str, value: bytes, token: CasToken, /, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is live and unwritten since ``gets`` gave ``token``."""
        data = _as_bytes(_check_key(key), value)
        _check_ttl(ttl)
        if type(token) is not bytes:
            return False
        slot = self._locate(key)
        fds = self._lock([slot])
        try:
            try:
                found = self._read(slot, value=False, check_root=False)
                now = self._clock()
                if found is None:
                    return False
                if not self._live(found[0], now):
                    self._unlink(slot.path)
                    return False
                if found[0].nonce != token:
                    return False
                self._write(slot, data, None if ttl is None else now + ttl)
            except OSError as exc:
                raise self._os_error("cas", slot, exc) from exc
        finally:
            self._unlock(fds)
        return True

    def close(self) -> None:
        """Do nothing: every operation opens and closes its own files. The store stays usable."""

    # -- extras ------------------------------------------------------------------------

    def _shards(self) -> list[str]:
        with os.scandir(self._root) as entries:
            return sorted(e.name for e in entries if _SHARD_NAME.fullmatch(e.name) and e.is_dir())

    def _sweep(self, action: str, *, everything: bool) -> int:
        """Under each shard's lock, remove orphaned temporary files and expired entries
        (every entry if ``everything``); the number of entries removed."""
        removed = 0
        path = self._root
        try:
            for shard in self._shards():
                shard_dir = path = f"{self._root}{os.sep}{shard}"
                fd = self._lock_shard(shard)
                try:
                    now = self._clock()
                    with os.scandir(shard_dir) as entries:
                        names = [e.name for e in entries]
                    for name in names:
                        path = f"{shard_dir}{os.sep}{name}"
                        if name.startswith(_TMP_PREFIX):
                            # Writers hold this lock while their temporary file exists,
                            # so one seen now was left by a writer that died.
                            self._unlink(path)
                        elif _ENTRY_NAME.fullmatch(name) and (
                            everything or self._expired(path, now)
                        ):
                            self._unlink(path)
                            removed += 1
                finally:
                    os.close(fd)
        except OSError as exc:
            raise BackendError(
                f"filesystem backend could not {action} (at {path}): {exc}", server=self._root
            ) from exc
        return removed

    @staticmethod
    def _expired(path: str, now: float) -> bool:
        """Whether the entry file at ``path`` has expired; False if malformed or gone."""
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            expires_at = _unpack(os.read(fd, _HEADER.size))[0]
        except _Malformed:
            return False
        finally:
            os.close(fd)
        return expires_at is not None and expires_at <= now

    def purge_expired(self) -> int:
        """Remove expired entries (and temporary files left by crashed writers).

        Malformed files are left alone. Each shard is swept under its lock.

        Returns:
            The number of expired entries removed.

        Raises:
            BackendError: the directory could not be listed or a file removed.
        """
        return self._sweep("purge expired entries", everything=False)

    def clear(self) -> None:
        """Remove every entry; shard directories and their lock files stay.

        Raises:
            BackendError: the directory could not be listed or a file removed.
        """
        self._sweep("clear the store", everything=True)
