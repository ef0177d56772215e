"""The sans-I/O RESP2 layer: encode, and both readers (hiredis, pure Python) on the same bytes."""

from __future__ import annotations

import pytest

from cacheorm import _resp
from cacheorm._resp import ProtocolError, PyReader, ReplyError, encode, make_reader

hiredis = pytest.importorskip("hiredis")

#: (bytes on the wire, the replies they hold)
CASES: list[tuple[bytes, list[object]]] = [
    (b"+OK\r\n", [b"OK"]),
    (b":42\r\n:-7\r\n", [42, -7]),
    (b"$5\r\nhello\r\n", [b"hello"]),
    (b"$0\r\n\r\n", [b""]),
    (b"$-1\r\n", [None]),
    (b"*-1\r\n", [None]),
    (b"*0\r\n", [[]]),
    (b"$6\r\na\r\nb\r\n\r\n", [b"a\r\nb\r\n"]),
    (b"*3\r\n$1\r\na\r\n$-1\r\n:1\r\n", [[b"a", None, 1]]),
    (b"*2\r\n*1\r\n+x\r\n*0\r\n", [[[b"x"], []]]),
    (b"$3\r\n\x00\xff\x80\r\n", [b"\x00\xff\x80"]),
]

ERRORS = b"-ERR unknown command\r\n*2\r\n-WRONGTYPE Operation\r\n:5\r\n-ERR bad \xff\r\n"


def _readers() -> list[_resp.Reader]:
    return [make_reader(use_hiredis=True), make_reader(use_hiredis=False)]


def _drain(reader: _resp.Reader) -> list[object]:
    replies: list[object] = []
    while (reply := reader.gets()) is not False:
        replies.append(reply)
    return replies


@pytest.mark.parametrize("use_hiredis", [True, False])
@pytest.mark.parametrize(("data", "expected"), CASES)
def test_readers_parse_whole_and_byte_by_byte(
    use_hiredis: bool, data: bytes, expected: list[object]
) -> None:
    """Each reader gives the same replies whether the bytes come at once or one at a time."""
    whole = make_reader(use_hiredis=use_hiredis)
    whole.feed(data)
    assert _drain(whole) == expected
    split = make_reader(use_hiredis=use_hiredis)
    got: list[object] = []
    for i in range(len(data)):
        split.feed(data[i : i + 1])
        got.extend(_drain(split))
    assert got == expected


@pytest.mark.parametrize("use_hiredis", [True, False])
def test_error_replies_are_values(use_hiredis: bool) -> None:
    """An error reply comes back as a ReplyError value (also inside an array), never raised."""
    reader = make_reader(use_hiredis=use_hiredis)
    reader.feed(ERRORS)
    first, array, last = _drain(reader)
    assert isinstance(first, ReplyError)
    assert first.message == "ERR unknown command"
    assert first.code == "ERR"
    assert isinstance(array, list)
    assert isinstance(array[0], ReplyError)
    assert array[0].code == "WRONGTYPE"
    assert array[1] == 5
    assert isinstance(last, ReplyError)
    assert last.message == "ERR bad \ufffd"
    assert ReplyError().message == ""


@pytest.mark.parametrize("use_hiredis", [True, False])
@pytest.mark.parametrize("data", [b"?junk\r\n", b":12x\r\n", b"*x\r\n"])
def test_protocol_errors_raise(use_hiredis: bool, data: bytes) -> None:
    """Bytes that are not RESP raise ProtocolError from both readers."""
    reader = make_reader(use_hiredis=use_hiredis)
    reader.feed(data)
    with pytest.raises(ProtocolError):
        reader.gets()


def test_py_reader_checks_bulk_string_ends() -> None:
    """A bulk string longer than announced is out of step (hiredis does not check this)."""
    reader = PyReader()
    reader.feed(b"$3\r\nabcde\r\n")
    with pytest.raises(ProtocolError, match="CRLF"):
        reader.gets()


def test_readers_agree_on_a_long_pipeline() -> None:
    """Many replies fed in uneven chunks: both readers give the same list."""
    data = b"".join(d for d, _ in CASES) * 500 + ERRORS
    results: list[list[str]] = []
    for reader in _readers():
        got: list[object] = []
        for i in range(0, len(data), 7):
            reader.feed(data[i : i + 7])
            got.extend(_drain(reader))
        results.append([repr(x) for x in got])
    assert results[0] == results[1]
    assert len(results[0]) == sum(len(e) for _, e in CASES) * 500 + 3


def test_py_reader_compacts_its_buffer() -> None:
    """The pure reader drops what it read once a lot has been read."""
    reader = PyReader()
    value = b"x" * 70000
    reader.feed(b"$70000\r\n" + value + b"\r\n" + b"+OK\r\n+O")
    assert reader.gets() == value
    assert reader.gets() == b"OK"
    assert reader.gets() is False
    reader.feed(b"K\r\n")
    assert reader.gets() == b"OK"
    assert reader.gets() is False


def test_make_reader_without_hiredis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without hiredis the default is the pure reader, and asking for hiredis fails clearly."""
    monkeypatch.setattr(_resp, "_HIREDIS", None)
    assert isinstance(make_reader(), PyReader)
    with pytest.raises(ImportError, match="hiredis"):
        make_reader(use_hiredis=True)


def test_hiredis_is_the_default() -> None:
    """With hiredis installed, make_reader() is hiredis's Reader."""
    assert isinstance(make_reader(), hiredis.Reader)


def test_encode() -> None:
    """Commands become RESP arrays of bulk strings, each argument type as redis-py sends it."""
    assert encode([("SET", b"k", 1), ("GET", "é")]) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert encode([("X", 1.5, bytearray(b"ab"), memoryview(b"c"), -3)]) == (
        b"*5\r\n$1\r\nX\r\n$3\r\n1.5\r\n$2\r\nab\r\n$1\r\nc\r\n$2\r\n-3\r\n"
    )
    assert encode([]) == b""


@pytest.mark.parametrize("bad", [True, None, object(), [b"x"]])
def test_encode_refuses_other_types(bad: object) -> None:
    """bool, None and other objects are refused, naming the type."""
    with pytest.raises(TypeError, match=type(bad).__name__):
        encode([("SET", "k", bad)])  # type: ignore[list-item]


def test_encode_refuses_lone_surrogates() -> None:
    """A str that is not valid UTF-8 raises UnicodeEncodeError."""
    with pytest.raises(UnicodeEncodeError):
        encode([("GET", "\ud800")])
