"""The Redis protocol (RESP2), sans I/O: commands to bytes, bytes to replies.

:func:`encode` turns commands into the bytes to write; a reader from
:func:`make_reader` takes the bytes read (``feed``) and hands back one whole
reply at a time (``gets``, ``False`` while a reply is incomplete), with the
interface of ``hiredis.Reader``. hiredis is used when it is installed (an
optional dependency of the ``redis`` extra); :class:`PyReader`, a small parser
in pure Python, stands in otherwise. Both give the same replies: bulk and
simple strings as ``bytes``, integers as ``int``, nil as ``None``, arrays as
``list``, and an error reply as a :class:`ReplyError` *value* (never raised:
the caller decides what an error means). Bytes that are not RESP raise
:class:`ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = [
    "Arg",
    "ProtocolError",
    "PyReader",
    "Reader",
    "ReplyError",
    "encode",
    "make_reader",
]

#: What a command's arguments may be.
Arg = bytes | bytearray | memoryview | str | int | float


class ReplyError(Exception):
    """A Redis error reply (``-ERR ...``, ``-WRONGTYPE ...``), handed back as a value.

    Attributes:
        message: the error text, e.g. ``"WRONGTYPE Operation against a key ..."``.
    """

    @property
    def message(self) -> str:
        """The error text Redis sent."""
        return str(self.args[0]) if self.args else ""

    @property
    def code(self) -> str:
        """The first word of the message: ``ERR``, ``WRONGTYPE``, ``NOSCRIPT``, ``MOVED``..."""
        return self.message.partition(" ")[0]


class ProtocolError(Exception):
    """The bytes read are not RESP: the connection is out of step and must be closed."""


class Reader(Protocol):
    """What a RESP reader offers (``hiredis.Reader``'s interface)."""

    def feed(self, data: bytes, /) -> None:
        """Add bytes read from the connection."""
        ...

    def gets(self) -> object:
        """The next whole reply, or ``False`` if more bytes are needed."""
        ...


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


_INCOMPLETE = _Incomplete()


class PyReader:
    """A RESP2 reader in pure Python, with ``hiredis.Reader``'s ``feed`` / ``gets``."""

    __slots__ = ("_buffer", "_start")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0

    def feed(self, data: bytes, /) -> None:
        """Add bytes read from the connection."""
        self._buffer += data

    def gets(self) -> object:
        """The next whole reply, or ``False`` if more bytes are needed.

        Raises:
            ProtocolError: the bytes are not RESP.
        """
        buffer = self._buffer
        if self._start >= len(buffer):
            return False
        try:
            reply, end = self._parse(buffer, self._start)
        except _Incomplete:
            return False
        if end >= len(buffer):
            buffer.clear()
            self._start = 0
        elif end > 65536:  # drop what was read, now and then
            del buffer[:end]
            self._start = 0
        else:
            self._start = end
        return reply

    def _line(self, buffer: bytearray, start: int) -> tuple[bytes, int]:
        end = buffer.find(b"\r\n", start)
        if end < 0:
            raise _INCOMPLETE
        return bytes(buffer[start:end]), end + 2

    def _int(self, line: bytes) -> int:
        try:
            return int(line)
        except ValueError:
            raise ProtocolError(f"Protocol error, expected a number, got {line[:40]!r}") from None

    def _parse(self, buffer: bytearray, start: int) -> tuple[object, int]:
        if start >= len(buffer):
            raise _INCOMPLETE
        kind = buffer[start]
        line, pos = self._line(buffer, start + 1)
        if kind == 36:  # $ bulk string
            size = self._int(line)
            if size < 0:
                return None, pos
            end = pos + size
            if len(buffer) < end + 2:
                raise _INCOMPLETE
            if not buffer.startswith(b"\r\n", end):
                raise ProtocolError("Protocol error, a bulk string does not end with CRLF")
            return bytes(buffer[pos:end]), end + 2
        if kind == 43:  # + simple string
            return line, pos
        if kind == 58:  # : integer
            return self._int(line), pos
        if kind == 45:  # - error
            return ReplyError(line.decode("utf-8", "replace")), pos
        if kind == 42:  # * array
            count = self._int(line)
            if count < 0:
                return None, pos
            items: list[object] = []
            for _ in range(count):
                item, pos = self._parse(buffer, pos)
                items.append(item)
            return items, pos
        raise ProtocolError(f'Protocol error, got "{chr(kind)}" as reply type byte')


def _hiredis_reader() -> Callable[[], Reader] | None:
    """A factory of ``hiredis.Reader`` set up like :class:`PyReader`, or None without hiredis."""
    try:
        import hiredis
    except ImportError:
        return None

    def make() -> Reader:
        reader: Reader = hiredis.Reader(protocolError=ProtocolError, replyError=ReplyError)
        return reader

    return make


_HIREDIS = _hiredis_reader()


def make_reader(*, use_hiredis: bool | None = None) -> Reader:
    """A new RESP reader: hiredis's when installed (or asked for), else :class:`PyReader`.

    Args:
        use_hiredis: True to require hiredis, False for the pure-Python reader,
            None (default) for hiredis when it is installed.

    Raises:
        ImportError: ``use_hiredis=True`` and hiredis is not installed.
    """
    if use_hiredis is False or (use_hiredis is None and _HIREDIS is None):
        return PyReader()
    if _HIREDIS is None:
        raise ImportError("hiredis is not installed: pip install 'cacheorm[redis]'")
    return _HIREDIS()


def encode(commands: Sequence[Sequence[Arg]]) -> bytes:
    """``commands`` in RESP, as one buffer: each an array of bulk strings.

    ``str`` is sent as UTF-8, ``int`` in decimal, ``float`` as ``repr`` (what
    redis-py sends); bytes-like objects as they are.

    Raises:
        TypeError: an argument of another type (``bool`` and ``None`` included).
        UnicodeEncodeError: a ``str`` argument that is not valid UTF-8 (a lone surrogate).
    """
    out: list[bytes] = []
    append = out.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            data: bytes
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, bool):
                raise TypeError("a Redis command argument is bytes, str, int or float, not bool")
            elif isinstance(arg, int):
                data = b"%d" % arg
            elif isinstance(arg, float):
                data = repr(arg).encode()
            elif isinstance(arg, (bytearray, memoryview)):
                data = bytes(arg)
            else:
                raise TypeError(
                    f"a Redis command argument is bytes, str, int or float, "
                    f"not {type(arg).__name__}"
                )
            append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)
