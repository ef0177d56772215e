"""DecimalCodec, ShortUUIDCodec and UTCDateTimeCodec: the original cacheorm's field types.

The codecs alone (known vectors, refusals, hypothesis round trips), then through
a Repository on every backend and serializer (protobuf too), with the errors a
bad value or a bad stored payload gives, and as primary keys.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
import zoneinfo
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cacheorm as co

SERIALIZERS = ["json", "msgpack", "pickle"]
UTC = dt.timezone.utc
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
PARIS = zoneinfo.ZoneInfo("Europe/Paris")

PROPERTIES = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

MONEY = co.DecimalCodec(places=2)
SHORT = co.ShortUUIDCodec()
UTC_TEXT = co.UTCDateTimeCodec()


# -- ShortUUIDCodec ----------------------------------------------------------------------

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def reference_shortuuid(value: uuid.UUID) -> str:
    """shortuuid's documented algorithm (>= 1.0), digit by digit.

    ``int_to_string``: divmod by the alphabet's length, least significant digit
    first; pad with ``alphabet[0]`` to ``ceil(log(2**128, 57)) == 22``; reverse.
    """
    number, digits = value.int, []
    while number:
        number, digit = divmod(number, len(ALPHABET))
        digits.append(ALPHABET[digit])
    digits.extend(ALPHABET[0] for _ in range(22 - len(digits)))
    return "".join(reversed(digits))


#: Published by the shortuuid project: README (encode of a uuid4, and
#: ``uuid(name="example.com")`` = uuid5(NAMESPACE_DNS)) and its test suite. The
#: README's ``decode('MLpZDiE')`` gives the padded vector.
SHORTUUID_VECTORS = [
    (uuid.UUID("6ca4f0f8-2508-4bac-b8f1-5d1e3da2247a"), "MLpZDiEXM4VsUryR9oE8uc"),
    (uuid.uuid5(uuid.NAMESPACE_DNS, "example.com"), "exu3DTbj2ncsn9tLdLWspw"),
    (uuid.UUID("3b1f8b40-222c-4a6e-b77e-779d5a94e21c"), "CXc85b4rqinB7s5J52TRYb"),
    (uuid.UUID("00000000-0000-0000-0000-009a5b27f8b9"), "222222222222222MLpZDiE"),
    (uuid.UUID(int=0), "2" * 22),
    (uuid.UUID(int=2**128 - 1), "oZEq7ovRbLq6UnGMPwc8B5"),
]


@pytest.mark.parametrize(("value", "text"), SHORTUUID_VECTORS)
def test_shortuuid_matches_the_published_vectors(value: uuid.UUID, text: str) -> None:
    """Encode and decode agree with the shortuuid package's published examples."""
    assert reference_shortuuid(value) == text
    assert SHORT.encode(value) == text
    assert SHORT.decode(text) == value


def test_shortuuid_alphabet_is_shortuuids_default() -> None:
    """The alphabet is shortuuid's: 57 characters, no 0 1 I O l, in ASCII order."""
    assert SHORT.alphabet == ALPHABET
    assert len(ALPHABET) == 57
    assert list(ALPHABET) == sorted(set(ALPHABET))
    assert not set("01IOl") & set(ALPHABET)
    assert SHORT.length == 22
    assert 57**21 < 2**128 <= 57**22


UUIDS = st.integers(min_value=0, max_value=2**128 - 1).map(lambda n: uuid.UUID(int=n))


@PROPERTIES
@given(value=UUIDS)
def test_shortuuid_round_trips_and_matches_the_reference(value: uuid.UUID) -> None:
    """Any UUID encodes to 22 alphabet characters, as the reference does, and decodes back."""
    text = SHORT.encode(value)
    assert text == reference_shortuuid(value)
    assert len(text) == 22
    assert set(text) <= set(ALPHABET)
    assert SHORT.decode(text) == value


@PROPERTIES
@given(a=UUIDS, b=UUIDS)
def test_shortuuid_text_sorts_like_the_uuids(a: uuid.UUID, b: uuid.UUID) -> None:
    """Fixed length and an ASCII-ordered alphabet: text order is number order."""
    assert (SHORT.encode(a) < SHORT.encode(b)) == (a.int < b.int)


@PROPERTIES
@given(text=st.text(alphabet=ALPHABET, min_size=22, max_size=22))
def test_shortuuid_decodes_every_22_characters_or_refuses_over_128_bits(text: str) -> None:
    """Every 22-character alphabet text decodes (and re-encodes to itself) or is > 128 bits."""
    number = 0
    for ch in text:
        number = number * 57 + ALPHABET.index(ch)
    if number < 2**128:
        assert SHORT.encode(SHORT.decode(text)) == text
    else:
        with pytest.raises(ValueError, match="more than 128 bits"):
            SHORT.decode(text)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"MLpZDiEXM4VsUryR9oE8uc", TypeError, "expected short UUID text, got bytes"),
        (None, TypeError, "got NoneType"),
        ("MLpZDiEXM4VsUryR9oE8u", ValueError, "is 21 characters long; a short UUID is 22"),
        ("MLpZDiEXM4VsUryR9oE8ucc", ValueError, "is 23 characters long"),
        ("", ValueError, "is 0 characters long"),
        ("6ca4f0f8-2508-4bac-b8f1-5d1e3da2247a", ValueError, "36 characters"),
        ("0LpZDiEXM4VsUryR9oE8uc", ValueError, "has '0', which is not a short UUID character"),
        ("MLpZDiEXM4VsUryR9oE8ul", ValueError, "has 'l'"),
        ("MLpZDiEXM4VsUryR9oE8uI", ValueError, "has 'I'"),
        ("MLpZDiEXM4VsUryR9oE8u-", ValueError, "has '-'"),
        ("MLpZDiEXM4VsUryR9oE8u\u0663", ValueError, "not a short UUID character"),
        ("oZEq7ovRbLq6UnGMPwc8B6", ValueError, "more than 128 bits"),
        ("z" * 22, ValueError, "more than 128 bits"),
    ],
)
def test_shortuuid_decode_refuses_what_it_never_writes(
    data: Any, error: type[Exception], message: str
) -> None:
    """Decode checks type, length, alphabet and the 128-bit limit, and says which failed."""
    with pytest.raises(error, match=message.replace("(", r"\(")):
        SHORT.decode(data)


@pytest.mark.parametrize("value", ["6ca4f0f8-2508-4bac-b8f1-5d1e3da2247a", 5, None, b"x" * 16])
def test_shortuuid_encode_needs_a_uuid(value: Any) -> None:
    """A UUID's text, an int or bytes are not UUIDs: TypeError."""
    with pytest.raises(TypeError, match=f"expected UUID, got {type(value).__name__}"):
        SHORT.encode(value)


def test_shortuuid_encodes_uuid_subclasses() -> None:
    """A UUID subclass is stored like its plain UUID and read back as a plain UUID."""

    class MyUUID(uuid.UUID):
        pass

    value = MyUUID(int=12345)
    assert SHORT.encode(value) == SHORT.encode(uuid.UUID(int=12345))
    assert type(SHORT.decode(SHORT.encode(value))) is uuid.UUID


# -- DecimalCodec --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "value", "text"),
    [
        (MONEY, Decimal("9.5"), "9.50"),
        (MONEY, Decimal("9.50"), "9.50"),
        (MONEY, Decimal("9.5000"), "9.50"),
        (MONEY, Decimal("-12.34"), "-12.34"),
        (MONEY, Decimal("0"), "0.00"),
        (MONEY, Decimal("-0.00"), "0.00"),
        (MONEY, Decimal("1E+3"), "1000.00"),
        (MONEY, Decimal("1.2E-1"), "0.12"),
        (MONEY, 7, "7.00"),
        (MONEY, -7, "-7.00"),
        (co.DecimalCodec(0), Decimal("12"), "12"),
        (co.DecimalCodec(8), Decimal("0.00000001"), "0.00000001"),
        (co.DecimalCodec(2, rounding=decimal.ROUND_HALF_UP), Decimal("9.995"), "10.00"),
        (co.DecimalCodec(2, rounding=decimal.ROUND_HALF_UP), Decimal("2.345"), "2.35"),
        (co.DecimalCodec(2, rounding=decimal.ROUND_HALF_EVEN), Decimal("2.345"), "2.34"),
        (co.DecimalCodec(2, rounding=decimal.ROUND_DOWN), Decimal("-2.349"), "-2.34"),
        (co.DecimalCodec(2, rounding=decimal.ROUND_FLOOR), Decimal("-2.341"), "-2.35"),
        (co.DecimalCodec(2, rounding=decimal.ROUND_HALF_UP), Decimal("-0.001"), "0.00"),
        (co.DecimalCodec(2, max_digits=5), Decimal("999.99"), "999.99"),
    ],
)
def test_decimal_encode_writes_exactly_places_decimals(
    codec: co.DecimalCodec, value: Any, text: str
) -> None:
    """Stored text has exactly `places` decimals, rounded only when a mode was given."""
    assert codec.encode(value) == text
    assert codec.decode(text) == Decimal(text)


def test_decimal_ignores_the_threads_decimal_context() -> None:
    """A narrow thread context (precision 3, rounding up) changes nothing stored or read."""
    with decimal.localcontext(decimal.Context(prec=3, rounding=decimal.ROUND_UP)):
        assert MONEY.encode(Decimal("123456.78")) == "123456.78"
        assert MONEY.decode("123456.78") == Decimal("123456.78")
        half_even = co.DecimalCodec(2, rounding=decimal.ROUND_HALF_EVEN)
        assert half_even.encode(Decimal("123456.785")) == "123456.78"


@pytest.mark.parametrize(
    ("codec", "value", "error", "message"),
    [
        (MONEY, Decimal("1.005"), ValueError, "has more than 2 decimal places.*refuses to round"),
        (MONEY, Decimal("0.001"), ValueError, "more than 2 decimal places"),
        (MONEY, Decimal("NaN"), ValueError, "NaN is not a finite amount"),
        (MONEY, Decimal("sNaN"), ValueError, "not a finite amount"),
        (MONEY, Decimal("-Infinity"), ValueError, "-Infinity is not a finite amount"),
        (MONEY, True, TypeError, "expected Decimal or int, got bool"),
        (MONEY, 1.5, TypeError, "expected Decimal or int, got float"),
        (MONEY, "1.50", TypeError, "got str"),
        (MONEY, None, TypeError, "got NoneType"),
        (MONEY, Decimal("1E+5000"), ValueError, "needs more than 4300 digits"),
        (co.DecimalCodec(2, max_digits=5), Decimal("1000.00"), ValueError, "more than 5 digits"),
        (
            co.DecimalCodec(2, max_digits=5, rounding=decimal.ROUND_HALF_UP),
            Decimal("999.995"),
            ValueError,
            "more than 5 digits",
        ),
    ],
)
def test_decimal_encode_refuses_with_a_reason(
    codec: co.DecimalCodec, value: Any, error: type[Exception], message: str
) -> None:
    """Floats, bools, text, NaN, infinities, too many digits and unasked rounding are refused."""
    with pytest.raises(error, match=message):
        codec.encode(value)


def test_decimal_accepts_subclasses_of_decimal_and_int() -> None:
    """Subclasses are stored like their plain values."""

    class Cents(int):
        pass

    class Amount(Decimal):
        pass

    assert MONEY.encode(Cents(3)) == "3.00"
    assert MONEY.encode(Amount("1.5")) == "1.50"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12.50", Decimal("12.50")),
        ("12.5", Decimal("12.50")),
        ("12", Decimal("12.00")),
        ("-0.00", Decimal("0.00")),
        ("007.10", Decimal("7.10")),
        ("7.1000", Decimal("7.10")),
        ("-0.000", Decimal("0.00")),
    ],
)
def test_decimal_decode_reads_every_exact_amount_with_places_decimals(
    text: str, value: Decimal
) -> None:
    """Plain decimal text whose value fits in `places` decimals reads back with that many."""
    got = MONEY.decode(text)
    assert got == value
    assert got.as_tuple().exponent == -2
    assert not got.is_signed()


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (12.5, TypeError, "expected decimal text, got float"),
        (1250, TypeError, "got int"),
        (None, TypeError, "got NoneType"),
        ("12.505", ValueError, "has more than 2 decimal places.*never rounds"),
        ("NaN", ValueError, "is not decimal text like '12.50'"),
        ("Infinity", ValueError, "is not decimal text"),
        ("1E+2", ValueError, "is not decimal text"),
        ("+1.00", ValueError, "is not decimal text"),
        (" 1.00", ValueError, "is not decimal text"),
        ("1_000.00", ValueError, "is not decimal text"),
        ("1.", ValueError, "is not decimal text"),
        (".5", ValueError, "is not decimal text"),
        ("", ValueError, "is not decimal text"),
        ("\u0661.00", ValueError, "is not decimal text"),
        pytest.param("9" * 5000, ValueError, "is not decimal text", id="5000 digits"),
        pytest.param("9" * 4330, ValueError, "needs more than 4300 digits", id="4330 digits"),
    ],
)
def test_decimal_decode_refuses_with_a_reason(
    data: Any, error: type[Exception], message: str
) -> None:
    """Non-text, exponents, signs, spaces, NaN, extra decimals and huge numbers are refused."""
    with pytest.raises(error, match=message):
        MONEY.decode(data)


def test_decimal_decode_applies_max_digits() -> None:
    """A stored amount longer than max_digits is refused on read, too."""
    codec = co.DecimalCodec(2, max_digits=5)
    assert codec.decode("999.99") == Decimal("999.99")
    with pytest.raises(ValueError, match="more than 5 digits"):
        codec.decode("1000.00")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"places": -1}, "places must be an int from 0 to 100"),
        ({"places": 101}, "places must be"),
        ({"places": True}, "places must be"),
        ({"places": 2.0}, "places must be"),
        ({"rounding": "HALF_UP"}, "rounding must be None or a decimal rounding mode"),
        ({"max_digits": 2}, r"max_digits must be an int above places \(2\)"),
        ({"max_digits": 5000}, "at most 4300"),
        ({"max_digits": 10.0}, "max_digits must be"),
    ],
)
def test_decimal_codec_refuses_bad_options(kwargs: dict[str, Any], message: str) -> None:
    """Bad places, rounding or max_digits fail when the codec is built."""
    with pytest.raises(ValueError, match=message):
        co.DecimalCodec(**kwargs)


def test_decimal_codec_repr_shows_its_options() -> None:
    """repr names the options that differ from the defaults."""
    assert repr(MONEY) == "DecimalCodec(places=2)"
    codec = co.DecimalCodec(4, rounding=decimal.ROUND_HALF_UP, max_digits=12)
    assert repr(codec) == "DecimalCodec(places=4, rounding='ROUND_HALF_UP', max_digits=12)"
    assert codec.places == 4
    assert codec.rounding == decimal.ROUND_HALF_UP


AMOUNTS = st.decimals(
    allow_nan=False, allow_infinity=False, places=2, min_value=-(10**15), max_value=10**15
)


@PROPERTIES
@given(value=AMOUNTS)
def test_decimal_round_trips_amounts_with_at_most_places_decimals(value: Decimal) -> None:
    """decode(encode(x)) == x, the text has exactly 2 decimals, and no sign on zero."""
    text = MONEY.encode(value)
    whole, _, fraction = text.partition(".")
    assert len(fraction) == 2
    assert whole.lstrip("-").isdigit()
    assert not text.startswith("-0.00")
    assert MONEY.decode(text) == value
    assert Decimal(text) == value


ROUNDINGS = st.sampled_from(
    [
        decimal.ROUND_05UP,
        decimal.ROUND_CEILING,
        decimal.ROUND_DOWN,
        decimal.ROUND_FLOOR,
        decimal.ROUND_HALF_DOWN,
        decimal.ROUND_HALF_EVEN,
        decimal.ROUND_HALF_UP,
        decimal.ROUND_UP,
    ]
)


@PROPERTIES
@given(
    value=st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**12), max_value=10**12),
    places=st.integers(min_value=0, max_value=6),
    rounding=ROUNDINGS,
)
def test_decimal_rounds_like_quantize_with_the_given_mode(
    value: Decimal, places: int, rounding: str
) -> None:
    """With a rounding mode the stored amount is Decimal.quantize's, in an unlimited context."""
    codec = co.DecimalCodec(places, rounding=rounding)
    expected = value.quantize(
        Decimal(1).scaleb(-places), rounding=rounding, context=decimal.Context(prec=100)
    )
    text = codec.encode(value)
    assert Decimal(text) == expected
    assert codec.decode(text) == expected
    strict = co.DecimalCodec(places)
    if expected == value:
        assert strict.encode(value) == text
    else:
        with pytest.raises(ValueError, match="refuses to round"):
            strict.encode(value)


# -- UTCDateTimeCodec -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), "2024-05-06T07:08:09.000000+00:00"),
        (dt.datetime(2024, 5, 6, 12, 38, 9, 5, tzinfo=IST), "2024-05-06T07:08:09.000005+00:00"),
        (dt.datetime(2024, 5, 6, 9, 8, 9, tzinfo=PARIS), "2024-05-06T07:08:09.000000+00:00"),
        (dt.datetime(2024, 1, 6, 8, 8, 9, tzinfo=PARIS), "2024-01-06T07:08:09.000000+00:00"),
        # The repeated hour of a DST change: fold picks which of the two instants.
        (dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS), "2024-10-27T00:30:00.000000+00:00"),
        (
            dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),
            "2024-10-27T01:30:00.000000+00:00",
        ),
        (dt.datetime(1, 1, 1, 5, 30, tzinfo=IST), "0001-01-01T00:00:00.000000+00:00"),
    ],
)
def test_utc_datetime_encode_converts_to_utc(value: dt.datetime, text: str) -> None:
    """Any zone is stored as its UTC instant, with six fraction digits and +00:00."""
    assert UTC_TEXT.encode(value) == text
    back = UTC_TEXT.decode(text)
    # astimezone: PEP 495 makes an ambiguous (fold) time unequal to every other zone's.
    assert back == value.astimezone(UTC)
    assert back.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (dt.datetime(2024, 5, 6, 7, 8, 9), ValueError, "needs an aware datetime"),
        (dt.date(2024, 5, 6), TypeError, "expected datetime, got date"),
        ("2024-05-06T07:08:09+00:00", TypeError, "got str"),
        (1714979289, TypeError, "got int"),
        (
            dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            ValueError,
            "out of range in UTC",
        ),
        (
            dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-1))),
            ValueError,
            "out of range",
        ),
    ],
)
def test_utc_datetime_encode_refuses_with_a_reason(
    value: Any, error: type[Exception], message: str
) -> None:
    """Naive datetimes, dates, text, numbers and moments outside UTC's range are refused."""
    with pytest.raises(error, match=message):
        UTC_TEXT.encode(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2024-05-06T07:08:09.000000+00:00", dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06T07:08:09+00:00", dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06T07:08:09Z", dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06T07:08:09.123Z", dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)),
        ("2024-05-06T12:38:09.000001+05:30", dt.datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=UTC)),
        ("2024-05-06T04:08:09-03:00", dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06T07:08:39+00:00:30", dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06T07:08:09-00:00", dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
    ],
)
def test_utc_datetime_decode_reads_any_aware_iso_text_as_utc(text: str, value: dt.datetime) -> None:
    """Other offsets (and Z) are converted; the result's tzinfo is always timezone.utc."""
    got = UTC_TEXT.decode(text)
    assert got == value
    assert got.tzinfo is UTC
    assert type(got) is dt.datetime


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ("2024-05-06T07:08:09", ValueError, "has no UTC offset; UTCDateTimeCodec refuses naive"),
        ("2024-05-06T07:08:09.123456", ValueError, "has no UTC offset"),
        ("2024-05-06 07:08:09+00:00", ValueError, "is not ISO 8601 text with a UTC offset"),
        ("2024-05-06", ValueError, "is not ISO 8601 text"),
        ("20240506T070809Z", ValueError, "is not ISO 8601 text"),
        ("2024-05-06T07:08:09,5+00:00", ValueError, "is not ISO 8601 text"),
        ("2024-05-06T07:08:09.5+00:00", ValueError, "is not ISO 8601 text"),
        ("2024-05-06T07:08:09z", ValueError, "is not ISO 8601 text"),
        ("\u0662024-05-06T07:08:09Z", ValueError, "is not ISO 8601 text"),
        ("2024-02-30T07:08:09Z", ValueError, "is not a valid moment: day is out of range"),
        ("2024-05-06T25:08:09Z", ValueError, "is not a valid moment"),
        ("2024-05-06T07:08:09+24:00", ValueError, "is not a valid moment"),
        ("0001-01-01T00:00:00+01:00", ValueError, "is not a valid moment"),
        (1714979289, TypeError, "expected ISO 8601 text, got int"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_utc_datetime_decode_refuses_with_a_reason(
    data: Any, error: type[Exception], message: str
) -> None:
    """Naive text, other shapes, impossible moments and non-text are refused on read."""
    with pytest.raises(error, match=message):
        UTC_TEXT.decode(data)


OFFSETS = st.builds(
    lambda seconds: dt.timezone(dt.timedelta(seconds=seconds)),
    st.integers(min_value=-86399, max_value=86399),
)
MOMENTS = st.datetimes(
    min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31), timezones=OFFSETS
)


@PROPERTIES
@given(value=MOMENTS)
def test_utc_datetime_round_trips_every_instant(value: dt.datetime) -> None:
    """decode(encode(x)) is the same instant, in UTC, and the text is fixed-width."""
    text = UTC_TEXT.encode(value)
    assert len(text) == 32
    assert text.endswith("+00:00")
    back = UTC_TEXT.decode(text)
    assert back == value
    assert back.tzinfo is UTC
    assert UTC_TEXT.encode(back) == text


@PROPERTIES
@given(a=MOMENTS, b=MOMENTS)
def test_utc_datetime_text_sorts_in_time_order(a: dt.datetime, b: dt.datetime) -> None:
    """One text per instant, and text order is time order."""
    ta, tb = UTC_TEXT.encode(a), UTC_TEXT.encode(b)
    assert (ta < tb) == (a < b)
    assert (ta == tb) == (a == b)


# -- through a Repository -------------------------------------------------------------------------


@dataclasses.dataclass
class Order:
    id: Annotated[int, co.Field(primary_key=True)]
    total: Annotated[Decimal, co.Field(codec=co.DecimalCodec(places=2))]
    ref: Annotated[uuid.UUID, co.Field(codec=co.ShortUUIDCodec())]
    placed: Annotated[dt.datetime, co.Field(codec=co.UTCDateTimeCodec())]
    tip: Annotated[Decimal | None, co.Field(codec=co.DecimalCodec(2))] = None
    parent: Annotated[uuid.UUID | None, co.Field(codec=co.ShortUUIDCodec())] = None
    shipped: Annotated[dt.datetime | None, co.Field(codec=co.UTCDateTimeCodec())] = None
    lines: list[Annotated[Decimal, co.Field(codec=co.DecimalCodec(2))]] = dataclasses.field(
        default_factory=list
    )


REF = uuid.UUID("6ca4f0f8-2508-4bac-b8f1-5d1e3da2247a")
PLACED = dt.datetime(2024, 5, 6, 12, 38, 9, 250_000, tzinfo=IST)


def order(**changes: Any) -> Order:
    """A valid order; ``changes`` override fields."""
    base = Order(id=1, total=Decimal("9.5"), ref=REF, placed=PLACED, lines=[Decimal("4.75"), 5])
    return dataclasses.replace(base, **changes)


def test_every_backend_and_serializer_round_trips_the_three_types(
    backend: co.Backend, serializer_name: str
) -> None:
    """On real servers, each serializer stores the canonical texts and reads the values back."""
    orders = co.Repository(Order, backend=backend, serializer=serializer_name)
    full = order(
        id=2,
        tip=Decimal("1"),
        parent=uuid.UUID(int=0),
        shipped=dt.datetime(2024, 5, 7, tzinfo=PARIS),
    )
    orders.create(order())
    orders.create(full)
    raw = backend.get(orders.key_for(2))
    assert raw is not None
    stored = orders.serializer.loads(raw)
    assert stored["total"] == "9.50"
    assert stored["ref"] == "MLpZDiEXM4VsUryR9oE8uc"
    assert stored["placed"] == "2024-05-06T07:08:09.250000+00:00"
    assert stored["tip"] == "1.00"
    assert stored["parent"] == "2" * 22
    assert stored["shipped"] == "2024-05-06T22:00:00.000000+00:00"
    assert stored["lines"] == ["4.75", "5.00"]
    first, second = orders.get_many([1, 2])
    assert first is not None
    assert second is not None
    assert first.tip is None
    assert first.parent is None
    assert first.shipped is None
    assert second == full
    assert second.total == Decimal("9.50")
    assert second.total.as_tuple().exponent == -2
    assert second.placed.tzinfo is UTC
    assert second.shipped is not None
    assert second.shipped.tzinfo is UTC
    assert second.lines == [Decimal("4.75"), Decimal("5.00")]


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize(
    ("changes", "path", "actual", "reason"),
    [
        ({"total": Decimal("9.999")}, "$.total", "Decimal", "has more than 2 decimal places"),
        ({"total": 9.5}, "$.total", "float", "expected Decimal or int, got float"),
        ({"total": True}, "$.total", "bool", "got bool"),
        ({"total": Decimal("NaN")}, "$.total", "Decimal", "not a finite amount"),
        ({"tip": Decimal("Infinity")}, "$.tip", "Decimal", "not a finite amount"),
        ({"lines": [Decimal("1"), Decimal("0.001")]}, "$.lines[1]", "Decimal", "decimal places"),
        ({"ref": str(REF)}, "$.ref", "str", "expected UUID, got str"),
        ({"parent": "MLpZDiEXM4VsUryR9oE8uc"}, "$.parent", "str", "expected UUID"),
        ({"placed": dt.datetime(2024, 5, 6)}, "$.placed", "datetime", "needs an aware datetime"),
        ({"shipped": dt.date(2024, 5, 6)}, "$.shipped", "date", "expected datetime, got date"),
    ],
)
def test_a_bad_value_is_a_validation_error_naming_model_and_field(
    serializer: str, changes: dict[str, Any], path: str, actual: str, reason: str
) -> None:
    """A write of a value the codec refuses raises ValidationError with model, path and reason."""
    orders = co.Repository(Order, backend=co.MemoryBackend(), serializer=serializer)
    with pytest.raises(co.ValidationError) as info:
        orders.create(order(**changes))
    error = info.value
    assert type(error) is co.ValidationError
    assert error.model is Order
    assert error.path == path
    assert error.actual == actual
    assert error.key == "order:1"
    message = str(error)
    assert message.startswith("Order (key 'order:1'): at `" + path + "`")
    assert reason in message
    assert not orders.exists(1)


def _plant(orders: co.Repository[Order], **changes: Any) -> str:
    """Store a valid order's primitives with ``changes`` applied, bypassing the codecs."""
    orders.save(order())
    key = orders.key_for(1)
    raw = orders.backend.get(key)
    assert raw is not None
    data = orders.serializer.loads(raw)
    data.update(changes)
    orders.backend.set(key, orders.serializer.dumps(data))
    return key


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize(
    ("changes", "path", "reason"),
    [
        ({"total": "9.505"}, "$.total", "has more than 2 decimal places"),
        ({"total": "NaN"}, "$.total", "is not decimal text"),
        ({"total": 9.5}, "$.total", "expected decimal text, got float"),
        ({"lines": ["1.00", "1e3"]}, "$.lines[1]", "is not decimal text"),
        ({"ref": "6ca4f0f8-2508-4bac-b8f1-5d1e3da2247a"}, "$.ref", "a short UUID is 22"),
        ({"ref": "0LpZDiEXM4VsUryR9oE8uc"}, "$.ref", "not a short UUID character"),
        ({"parent": "z" * 22}, "$.parent", "more than 128 bits"),
        ({"placed": "2024-05-06T07:08:09"}, "$.placed", "refuses naive times"),
        ({"shipped": "yesterday"}, "$.shipped", "is not ISO 8601 text"),
        ({"placed": 1714979289}, "$.placed", "expected ISO 8601 text, got int"),
    ],
)
def test_a_bad_stored_value_is_a_deserialization_error_naming_model_and_field(
    serializer: str, changes: dict[str, Any], path: str, reason: str
) -> None:
    """A stored value the codec refuses raises DeserializationError with key, path and reason."""
    orders = co.Repository(Order, backend=co.MemoryBackend(), serializer=serializer)
    key = _plant(orders, **changes)
    with pytest.raises(co.DeserializationError) as info:
        orders.get(1)
    error = info.value
    assert error.model is Order
    assert error.key == key
    assert error.path == path
    assert str(error).startswith(f"Order (key {key!r}, serializer {serializer!r})")
    assert reason in str(error)


@dataclasses.dataclass
class LegacyEvent:
    id: Annotated[int, co.Field(primary_key=True)]
    at: dt.datetime
    amount: Annotated[Decimal, co.Field(codec=co.DecimalCodec(2))]


@dataclasses.dataclass
class Event:
    id: Annotated[int, co.Field(primary_key=True)]
    at: Annotated[dt.datetime, co.Field(codec=co.UTCDateTimeCodec())]
    amount: Annotated[Decimal, co.Field(codec=co.DecimalCodec(4))]


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_records_of_a_plain_datetime_and_fewer_places_read_back(serializer: str) -> None:
    """Switching a field to UTCDateTimeCodec, or widening places, keeps old records readable."""
    store = co.MemoryBackend()
    old = co.Repository(LegacyEvent, backend=store, serializer=serializer, namespace="event")
    new = co.Repository(Event, backend=store, serializer=serializer, namespace="event")
    old.create(LegacyEvent(id=1, at=PLACED, amount=Decimal("2.5")))
    got = new.get(1)
    assert got.at == PLACED
    assert got.at.tzinfo is UTC
    assert got.amount == Decimal("2.5000")
    assert got.amount.as_tuple().exponent == -4
    new.save(got)  # stored as "2.5000": still exact in 2 places, so the old model reads it
    assert old.get(1).amount == Decimal("2.50")
    new.save(dataclasses.replace(got, amount=Decimal("2.1234")))
    with pytest.raises(co.DeserializationError, match="more than 2 decimal places"):
        old.get(1)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_round_trip_through_the_serializer_keeps_the_canonical_text(serializer: str) -> None:
    """The JSON payload holds plain strings: readable by other languages' shortuuid and ISO code."""
    orders = co.Repository(Order, backend=co.MemoryBackend(), serializer=serializer)
    orders.create(order())
    raw = orders.backend.get("order:1")
    assert raw is not None
    if serializer == "json":
        assert json.loads(raw)["ref"] == "MLpZDiEXM4VsUryR9oE8uc"
    assert orders.get(1) == order(placed=PLACED.astimezone(UTC), lines=[Decimal("4.75"), 5])


# -- protobuf --------------------------------------------------------------------------------------


def _protobuf_order_class() -> type[Any]:
    """A proto3 message mirroring Order, built at test time: every codec field is a string."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="cacheorm_field_codecs.proto", package="fieldcodecs", syntax="proto3"
    )
    message = fdp.message_type.add(name="Order")
    message.field.add(name="id", number=1, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    number = 2
    for name in ("total", "ref", "placed"):
        message.field.add(name=name, number=number, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        number += 1
    for index, name in enumerate(("tip", "parent", "shipped")):
        message.oneof_decl.add(name=f"_{name}")
        message.field.add(
            name=name,
            number=number,
            type=f.TYPE_STRING,
            label=f.LABEL_OPTIONAL,
            proto3_optional=True,
            oneof_index=index,
        )
        number += 1
    message.field.add(name="lines", number=number, type=f.TYPE_STRING, label=f.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fieldcodecs.Order"))


@pytest.fixture(scope="module")
def protobuf_orders_class() -> type[Any]:
    """The Order message class."""
    return _protobuf_order_class()


def test_protobuf_round_trips_the_three_types(
    protobuf_orders_class: type[Any], redis_backend: co.RedisBackend
) -> None:
    """The codecs' text travels in proto `string` fields, on Redis, None kept apart."""
    orders = co.Repository(
        Order, backend=redis_backend, serializer=co.ProtobufSerializer(protobuf_orders_class)
    )
    full = order(id=2, tip=Decimal("0.5"), parent=REF, shipped=PLACED)
    orders.create_many([order(), full])
    raw = redis_backend.get("order:2")
    assert raw is not None
    message = protobuf_orders_class.FromString(raw)
    assert message.total == "9.50"
    assert message.ref == "MLpZDiEXM4VsUryR9oE8uc"
    assert message.placed == "2024-05-06T07:08:09.250000+00:00"
    assert list(message.lines) == ["4.75", "5.00"]
    assert orders.get_many([1, 2]) == [
        order(placed=PLACED.astimezone(UTC)),
        full,
    ]
    assert orders.get(1).tip is None


def test_protobuf_bad_stored_text_is_a_deserialization_error(
    protobuf_orders_class: type[Any],
) -> None:
    """A proto string that is not a short UUID names the field, as with the other serializers."""
    orders = co.Repository(
        Order, backend=co.MemoryBackend(), serializer=co.ProtobufSerializer(protobuf_orders_class)
    )
    key = _plant(orders, ref="not-a-short-uuid")
    with pytest.raises(co.DeserializationError) as info:
        orders.get(1)
    assert info.value.path == "$.ref"
    assert info.value.key == key
    assert "a short UUID is 22" in str(info.value)


# -- as primary keys ---------------------------------------------------------------------


@dataclasses.dataclass
class Invite:
    id: Annotated[uuid.UUID, co.Field(primary_key=True, codec=co.ShortUUIDCodec())]
    email: str


@dataclasses.dataclass
class Tick:
    at: Annotated[dt.datetime, co.Field(primary_key=True, codec=co.UTCDateTimeCodec())]
    price: Annotated[Decimal, co.Field(codec=co.DecimalCodec(2))]


@pytest.fixture(params=["memory", "redis"])
def key_backend(request: pytest.FixtureRequest) -> Iterator[co.Backend]:
    """The memory backend and a real Redis."""
    if request.param == "memory":
        yield co.MemoryBackend()
    else:
        yield request.getfixturevalue("redis_backend")


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_short_uuid_primary_key_round_trips(key_backend: co.Backend, serializer: str) -> None:
    """A UUID key with ShortUUIDCodec: create, get, get_many and delete work by UUID."""
    invites = co.Repository(Invite, backend=key_backend, serializer=serializer)
    ids = [REF, uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    for n, pk in enumerate(ids):
        invites.create(Invite(id=pk, email=f"{n}@example.com"))
    assert invites.get(REF) == Invite(id=REF, email="0@example.com")
    assert [i.id for i in invites.get_many(ids) if i is not None] == ids
    with pytest.raises(co.AlreadyExists):
        invites.create(Invite(id=REF, email="again@example.com"))
    raw = key_backend.get(invites.key_for(REF))
    assert raw is not None
    assert invites.serializer.loads(raw)["id"] == "MLpZDiEXM4VsUryR9oE8uc"
    assert invites.delete(REF)
    assert not invites.exists(REF)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_utc_datetime_primary_key_round_trips_in_utc(
    key_backend: co.Backend, serializer: str
) -> None:
    """A datetime key with UTCDateTimeCodec round-trips when the key value is given in UTC."""
    ticks = co.Repository(Tick, backend=key_backend, serializer=serializer)
    at = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    ticks.create(Tick(at=at, price=Decimal("101.5")))
    got = ticks.get(at)
    assert got == Tick(at=at, price=Decimal("101.50"))
    assert ticks.key_of(got) == ticks.key_for(at)
    assert ticks.update(dataclasses.replace(got, price=Decimal("102"))).price == Decimal("102")
    assert ticks.get(at).price == Decimal("102.00")


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_a_key_function_keys_by_the_codec_text_today(
    key_backend: co.Backend, serializer: str
) -> None:
    """The documented stopgap: key=lambda pk: ... + codec.encode(pk) keys by the stored text."""
    invites = co.Repository(
        Invite,
        backend=key_backend,
        serializer=serializer,
        key=lambda pk: "invite:" + SHORT.encode(pk),
    )
    invites.create(Invite(id=REF, email="a@example.com"))
    assert invites.key_for(REF) == "invite:MLpZDiEXM4VsUryR9oE8uc"
    assert key_backend.get("invite:MLpZDiEXM4VsUryR9oE8uc") is not None
    assert invites.get(REF).email == "a@example.com"
    ticks = co.Repository(
        Tick,
        backend=key_backend,
        serializer=serializer,
        key=lambda pk: "tick:" + UTC_TEXT.encode(pk),
    )
    ticks.create(Tick(at=PLACED, price=Decimal("1")))
    got = ticks.get(PLACED.astimezone(UTC))
    assert ticks.key_of(got) == ticks.key_for(PLACED) == "tick:2024-05-06T07:08:09.250000+00:00"
    ticks.save(dataclasses.replace(got, price=Decimal("2")))
    assert ticks.get(PLACED).price == Decimal("2.00")


def test_a_short_uuid_key_uses_the_short_form(key_backend: co.Backend) -> None:
    """The key part is the codec's 22-character text, and the record reads back by it."""
    invites = co.Repository(Invite, backend=key_backend)
    assert invites.key_for(REF) == "invite:MLpZDiEXM4VsUryR9oE8uc"
    invites.create(Invite(id=REF, email="a@example.com"))
    assert key_backend.get("invite:MLpZDiEXM4VsUryR9oE8uc") is not None
    assert invites.get(REF).email == "a@example.com"
    assert invites.get_many([REF]) == [invites.get(REF)]


def test_one_instant_in_two_zones_is_one_key(key_backend: co.Backend) -> None:
    """A UTCDateTimeCodec key names the instant, whatever zone the value is in.

    Keyed by the value's own isoformat(), a record created from a +05:30 value
    was stored under a key its read-back (UTC) value did not produce, so saving
    the read-back record wrote a second copy.
    """
    ticks = co.Repository(Tick, backend=key_backend)
    ticks.create(Tick(at=PLACED, price=Decimal("1")))
    assert ticks.key_for(PLACED) == ticks.key_for(PLACED.astimezone(UTC))
    got = ticks.get(PLACED)
    ticks.save(dataclasses.replace(got, price=Decimal("2")))
    assert ticks.get(PLACED.astimezone(UTC)).price == Decimal("2.00")
    assert ticks.delete(PLACED) is True
    assert ticks.get_or_none(PLACED.astimezone(UTC)) is None


def test_a_decimal_codec_key_is_accepted() -> None:
    """A Decimal key with DecimalCodec is keyed by the stored text; 9.5 and 9.50 are one key."""

    @dataclasses.dataclass
    class Price:
        amount: Annotated[Decimal, co.Field(primary_key=True, codec=co.DecimalCodec(2))]

    prices = co.Repository(Price)
    assert prices.key_for(Decimal("9.5")) == prices.key_for(Decimal("9.50")) == "price:9.50"
    prices.create(Price(Decimal("9.5")))
    assert prices.get(Decimal("9.50")) == Price(Decimal("9.50"))


def test_a_key_value_the_codec_refuses_is_a_validation_error_naming_the_field() -> None:
    """A naive datetime, or a Decimal that needs rounding, is refused when the key is built."""
    ticks = co.Repository(Tick)
    with pytest.raises(co.ValidationError, match=r"Tick\.at: key part .* UTCDateTimeCodec") as info:
        ticks.key_for(dt.datetime(2024, 1, 1))
    assert info.value.path == "at"

    @dataclasses.dataclass
    class Price:
        amount: Annotated[Decimal, co.Field(primary_key=True, codec=co.DecimalCodec(2))]

    with pytest.raises(co.ValidationError, match="decimal places"):
        co.Repository(Price).get(Decimal("9.999"))


def test_a_codec_key_whose_encode_gives_another_type_is_refused() -> None:
    """A key codec must store text or an int; anything else is a ValidationError."""

    class AsList:
        def encode(self, value: int) -> list[int]:
            return [value]

        def decode(self, data: list[int]) -> int:
            return data[0]

    @dataclasses.dataclass
    class Odd:
        id: Annotated[int, co.Field(primary_key=True, codec=AsList())]

    with pytest.raises(co.ValidationError, match="stores as str or int"):
        co.Repository(Odd).key_for(1)


def test_an_int_codec_key_is_the_stored_number() -> None:
    """Timestamp stores an int: the key part is that number."""

    @dataclasses.dataclass
    class Event:
        at: Annotated[dt.datetime, co.Field(primary_key=True, codec=co.Timestamp("s"))]

    events = co.Repository(Event)
    moment = dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert events.key_for(moment) == f"event:{int(moment.timestamp())}"
    events.create(Event(moment))
    assert events.get(moment) == Event(moment)


def test_codec_reprs_and_protocol() -> None:
    """Each codec is a cacheorm Codec and says what it is in messages."""
    assert repr(SHORT) == "ShortUUIDCodec()"
    assert repr(UTC_TEXT) == "UTCDateTimeCodec()"
    for codec in (MONEY, SHORT, UTC_TEXT):
        assert isinstance(codec, co.Codec)


def test_docstring_examples_hold() -> None:
    """The examples in the codecs' docstrings give what they say."""
    half_up = co.DecimalCodec(2, rounding=decimal.ROUND_HALF_UP)
    assert half_up.encode(Decimal("9.995")) == "10.00"
    assert SHORT.encode(uuid.UUID("6ca4f0f8-2508-4bac-b8f1-5d1e3da2247a")) == (
        "MLpZDiEXM4VsUryR9oE8uc"
    )
    paris = dt.datetime(2024, 5, 6, 9, 8, 9, tzinfo=PARIS)
    assert UTC_TEXT.encode(paris) == "2024-05-06T07:08:09.000000+00:00"
    orders = co.Repository(Order)
    with pytest.raises(co.ValidationError, match="more than 2 decimal places"):
        orders.create(order(total=Decimal("9.999")))
