"""Codecs for the field types of the original cacheorm: money, short UUIDs, UTC times.

Each is a :class:`~cacheorm.Codec`, used as ``Annotated[T, co.Field(codec=...)]``.
Like every codec, they raise ``TypeError`` / ``ValueError`` for a value they
cannot store or read; cacheorm reports that as a ``ValidationError`` (write) or
a ``DeserializationError`` (read) naming the model, the field path and why.

All three store text in one canonical form per value, so equal values are
stored alike and the text can serve as a key part.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import re
import uuid
from decimal import Decimal
from typing import Any

from cacheorm._errors import safe_repr

__all__ = ["DecimalCodec", "ShortUUIDCodec", "UTCDateTimeCodec"]

_ROUNDINGS = frozenset(
    {
        decimal.ROUND_05UP,
        decimal.ROUND_CEILING,
        decimal.ROUND_DOWN,
        decimal.ROUND_FLOOR,
        decimal.ROUND_HALF_DOWN,
        decimal.ROUND_HALF_EVEN,
        decimal.ROUND_HALF_UP,
        decimal.ROUND_UP,
    }
)
#: Digits a DecimalCodec allows when ``max_digits`` is not given: Python's own
#: limit for int <-> text conversion, so no value costs unbounded time or memory.
_DEFAULT_MAX_DIGITS = 4300
_MAX_PLACES = 100
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


class DecimalCodec:
    """Store a ``Decimal`` amount as text with exactly ``places`` decimals ("12.50").

    Args:
        places: digits after the decimal point (0 to 100).
        rounding: a :mod:`decimal` rounding mode (``decimal.ROUND_HALF_UP``, ...)
            applied on write to values with more decimals than ``places``. With
            ``None`` (the default) such a value is refused instead: an amount
            is never rounded unless you asked for it.
        max_digits: at most this many digits in all, ``places`` included
            (``None``: 4300, Python's own limit for number text).

    On write it accepts a finite ``Decimal`` or an ``int`` (exact), never a
    ``float`` (binary fractions are not exact amounts), ``bool``, text, NaN or
    infinity. ``-0.00`` is stored as ``0.00``. On read it accepts plain
    decimal text (``-?digits[.digits]``, no exponent, ``+`` or spaces) whose
    value fits in ``places`` decimals exactly ("9.5" and "9.5000" read as
    9.50), so widening ``places`` keeps old records readable, while narrowing
    it makes records that would need rounding a ``DeserializationError``
    (reads never round).

    Example::

        @dataclasses.dataclass
        class Order:
            id: Annotated[int, co.Field(primary_key=True)]
            total: Annotated[Decimal, co.Field(codec=co.DecimalCodec(places=2))]

        orders.create(Order(id=1, total=Decimal("9.5")))   # stored as "9.50"
        orders.create(Order(id=2, total=Decimal("9.999"))) # ValidationError
        co.DecimalCodec(2, rounding=decimal.ROUND_HALF_UP).encode(Decimal("9.995"))
        # -> '10.00'
    """

    __slots__ = ("_context", "_exponent", "_max_text", "max_digits", "places", "rounding")

    def __init__(
        self, places: int = 2, *, rounding: str | None = None, max_digits: int | None = None
    ) -> None:
        if type(places) is not int or not 0 <= places <= _MAX_PLACES:
            raise ValueError(
                f"DecimalCodec places must be an int from 0 to {_MAX_PLACES}, not {places!r}"
            )
        if rounding is not None and rounding not in _ROUNDINGS:
            raise ValueError(
                "DecimalCodec rounding must be None or a decimal rounding mode "
                f"(decimal.ROUND_HALF_EVEN, ...), not {rounding!r}"
            )
        if max_digits is not None and (
            type(max_digits) is not int or not places < max_digits <= _DEFAULT_MAX_DIGITS
        ):
            raise ValueError(
                f"DecimalCodec max_digits must be an int above places ({places}) and at most "
                f"{_DEFAULT_MAX_DIGITS}, not {max_digits!r}"
            )
        self.places = places
        self.rounding = rounding
        self.max_digits = max_digits
        digits = _DEFAULT_MAX_DIGITS if max_digits is None else max_digits
        self._exponent = Decimal(1).scaleb(-places)
        # quantize signals InvalidOperation when the result needs more than
        # `prec` digits: that is the max_digits check, for free.
        self._context = decimal.Context(
            prec=digits,
            rounding=rounding or decimal.ROUND_HALF_EVEN,
            Emax=decimal.MAX_EMAX,
            Emin=decimal.MIN_EMIN,
            traps=[decimal.InvalidOperation],
        )
        # sign, point and leading zeros aside, longer text cannot fit: refused unparsed.
        self._max_text = digits + places + 2 + 32

    def __repr__(self) -> str:
        extra = "" if self.rounding is None else f", rounding={self.rounding!r}"
        if self.max_digits is not None:
            extra += f", max_digits={self.max_digits}"
        return f"DecimalCodec(places={self.places}{extra})"

    def encode(self, value: Decimal | int, /) -> str:
        """Return ``value`` as text with exactly ``places`` decimals.

        Raises:
            TypeError: ``value`` is not a Decimal or an int (a bool or float is refused).
            ValueError: it is NaN or infinite, has too many digits, or needs
                rounding and ``rounding`` is None.
        """
        if type(value) is not Decimal:
            if isinstance(value, Decimal):
                value = Decimal(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                value = Decimal(int(value))
            else:
                raise TypeError(f"expected Decimal or int, got {type(value).__name__}")
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite amount; {self!r} stores only finite values")
        try:
            stored = value.quantize(self._exponent, context=self._context)
        except decimal.InvalidOperation:
            raise ValueError(self._too_long(value)) from None
        if self.rounding is None and stored != value:
            raise ValueError(
                f"{safe_repr(value, 60)} has more than {self.places} decimal places; "
                f"{self!r} refuses to round it (pass rounding=decimal.ROUND_HALF_EVEN or "
                "another mode to round on write)"
            )
        if stored.is_signed() and stored.is_zero():
            stored = stored.copy_abs()
        return format(stored, "f")

    def decode(self, data: Any, /) -> Decimal:
        """Return the Decimal of stored text, with exactly ``places`` decimals.

        Raises:
            TypeError: ``data`` is not text.
            ValueError: it is not plain decimal text, or has more decimals or
                digits than this codec stores.
        """
        if type(data) is not str:
            raise TypeError(f"expected decimal text, got {type(data).__name__}")
        if len(data) > self._max_text or not _DECIMAL_TEXT.fullmatch(data):
            raise ValueError(f"{safe_repr(data, 60)} is not decimal text like '12.50'")
        value = Decimal(data)
        try:
            stored = value.quantize(self._exponent, context=self._context)
        except decimal.InvalidOperation:
            raise ValueError(self._too_long(value)) from None
        if stored != value:
            raise ValueError(
                f"{safe_repr(data, 60)} has more than {self.places} decimal places "
                f"({self!r} never rounds what it reads)"
            )
        if data[0] == "-" and stored.is_zero():
            stored = stored.copy_abs()
        return stored

    def _too_long(self, value: Decimal) -> str:
        limit = _DEFAULT_MAX_DIGITS if self.max_digits is None else self.max_digits
        return (
            f"{safe_repr(value, 60)} needs more than {limit} digits with "
            f"{self.places} decimal places ({self!r})"
        )


#: The ``shortuuid`` package's default alphabet: digits and letters without the
#: look-alikes 0, 1, I, O and l. It is in ASCII order, so fixed-length text sorts
#: like the numbers it encodes.
SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE = len(SHORTUUID_ALPHABET)  # 57
_LENGTH = 22  # 57**21 < 2**128 <= 57**22
# Two digits at a time: 11 divmods instead of 22.
_PAIRS = [a + b for a in SHORTUUID_ALPHABET for b in SHORTUUID_ALPHABET]
_PAIR_BASE = _BASE * _BASE
_PAIR_VALUE = {pair: i for i, pair in enumerate(_PAIRS)}
_UUID_LIMIT = 1 << 128


class ShortUUIDCodec:
    """Store a ``uuid.UUID`` as 22 characters of base57 text (``"MLpZDiEXM4VsUryR9oE8uc"``).

    The text is what the ``shortuuid`` package's default ``encode()`` writes
    (version 1.0 and later): the UUID's 128-bit number in base 57, most
    significant digit first, left-padded with ``"2"`` (the alphabet's zero) to
    22 characters, over the alphabet
    ``23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz``. So values
    written by either read back in the other, and no escaping is ever needed
    in keys, URLs or file names. The alphabet is in ASCII order, so stored
    texts sort like the UUIDs' numbers.

    On write it accepts a ``UUID`` (never its text). On read it accepts
    exactly 22 characters of the alphabet encoding at most 128 bits.

    Example::

        @dataclasses.dataclass
        class Invite:
            id: Annotated[uuid.UUID, co.Field(primary_key=True, codec=co.ShortUUIDCodec())]

        co.ShortUUIDCodec().encode(uuid.UUID("6ca4f0f8-2508-4bac-b8f1-5d1e3da2247a"))
        # -> 'MLpZDiEXM4VsUryR9oE8uc'
    """

    __slots__ = ()

    #: The characters stored values are made of.
    alphabet = SHORTUUID_ALPHABET
    #: The length of every stored value.
    length = _LENGTH

    def __repr__(self) -> str:
        return "ShortUUIDCodec()"

    def encode(self, value: uuid.UUID, /) -> str:
        """Return the 22-character base57 text of ``value``.

        Raises:
            TypeError: ``value`` is not a UUID.
        """
        if not isinstance(value, uuid.UUID):
            raise TypeError(f"expected UUID, got {type(value).__name__}")
        number = value.int
        pairs = _PAIRS
        out: list[str] = []
        for _ in range(_LENGTH // 2):
            number, pair = divmod(number, _PAIR_BASE)
            out.append(pairs[pair])
        out.reverse()
        return "".join(out)

    def decode(self, data: Any, /) -> uuid.UUID:
        """Return the UUID of 22 characters of base57 text.

        Raises:
            TypeError: ``data`` is not text.
            ValueError: wrong length, a character outside the alphabet, or a
                number of more than 128 bits.
        """
        if type(data) is not str:
            raise TypeError(f"expected short UUID text, got {type(data).__name__}")
        if len(data) != _LENGTH:
            raise ValueError(
                f"{safe_repr(data, 60)} is {len(data)} characters long; a short UUID is {_LENGTH}"
            )
        number = 0
        try:
            for start in range(0, _LENGTH, 2):  # two digits per lookup
                number = number * _PAIR_BASE + _PAIR_VALUE[data[start : start + 2]]
        except KeyError:
            bad = next(ch for ch in data if ch not in SHORTUUID_ALPHABET)
            raise ValueError(
                f"{safe_repr(data, 60)} has {safe_repr(bad)}, which is not a "
                "short UUID character (2-9, A-Z and a-z without I, O and l)"
            ) from None
        if number >= _UUID_LIMIT:
            raise ValueError(f"{safe_repr(data, 60)} encodes a number of more than 128 bits")
        return uuid.UUID(int=number)


_UTC = _dt.timezone.utc
#: ISO 8601 as Python writes it: date "T" time, optional fraction, and an offset
#: (or Z). ASCII digits only; a naive time has no offset and does not match.
_AWARE_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3}(?:[0-9]{3})?)?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{6})?)?)"
)
_NAIVE_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3}(?:[0-9]{3})?)?"
)


class UTCDateTimeCodec:
    """Store an aware ``datetime`` as ISO 8601 text in UTC: ``"2024-05-06T07:08:09.000000+00:00"``.

    The original cacheorm's ``DateTimeTZField``. On write, a datetime in any
    zone is converted to UTC; a naive one is refused (it names no instant).
    The text always has six fraction digits and ``+00:00``, so one instant has
    one stored form and stored texts sort in time order. Reads return
    datetimes whose ``tzinfo`` is ``datetime.timezone.utc``; they accept any
    aware ISO 8601 text Python writes (``Z`` too), converting other offsets to
    UTC, so records written by a plain aware ``datetime`` field read back.
    Naive text is refused on read as well.

    Example::

        @dataclasses.dataclass
        class Event:
            id: Annotated[int, co.Field(primary_key=True)]
            at: Annotated[datetime, co.Field(codec=co.UTCDateTimeCodec())]

        paris = datetime(2024, 5, 6, 9, 8, 9, tzinfo=ZoneInfo("Europe/Paris"))
        co.UTCDateTimeCodec().encode(paris)  # -> '2024-05-06T07:08:09.000000+00:00'
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "UTCDateTimeCodec()"

    def encode(self, value: _dt.datetime, /) -> str:
        """Return the UTC ISO 8601 text of an aware datetime.

        Raises:
            TypeError: ``value`` is not a datetime.
            ValueError: it is naive, or out of range once converted to UTC.
        """
        if not isinstance(value, _dt.datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                "UTCDateTimeCodec needs an aware datetime; a naive one names no single "
                "instant (attach a tzinfo, for instance datetime.timezone.utc)"
            )
        try:
            utc = _dt.datetime.astimezone(value, _UTC)
        except OverflowError:
            raise ValueError(f"{safe_repr(value, 80)} is out of range in UTC") from None
        return _dt.datetime.isoformat(utc, timespec="microseconds")

    def decode(self, data: Any, /) -> _dt.datetime:
        """Return the UTC datetime of stored aware ISO 8601 text.

        Raises:
            TypeError: ``data`` is not text.
            ValueError: it is not aware ISO 8601 text, or not a valid moment.
        """
        if type(data) is not str:
            raise TypeError(f"expected ISO 8601 text, got {type(data).__name__}")
        if not _AWARE_TEXT.fullmatch(data):
            if _NAIVE_TEXT.fullmatch(data):
                raise ValueError(
                    f"{safe_repr(data, 60)} has no UTC offset; UTCDateTimeCodec refuses naive times"
                )
            raise ValueError(f"{safe_repr(data, 60)} is not ISO 8601 text with a UTC offset")
        text = data[:-1] + "+00:00" if data[-1] == "Z" else data
        try:
            value = _dt.datetime.fromisoformat(text)
            return value if value.tzinfo is _UTC else value.astimezone(_UTC)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"{safe_repr(data, 60)} is not a valid moment: {exc}") from None
