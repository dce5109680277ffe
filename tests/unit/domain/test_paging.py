import base64
import re
import struct
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.domain.errors import InvalidInputError
from support.domain.paging import ID_CURSOR, SEQ_CURSOR, TIME_ID_CURSOR

URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")
STAMP = datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=UTC)
ID = UUID("01890a5d-ac96-774b-bcce-b302099a8057")


def _raw(record: bytes) -> str:
    return base64.urlsafe_b64encode(record).rstrip(b"=").decode()


@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_time_and_id_round_trip_as_url_safe_text(stamp: datetime, identifier: UUID) -> None:
    cursor = TIME_ID_CURSOR.encode((stamp, identifier))

    assert URL_SAFE.fullmatch(cursor)
    assert TIME_ID_CURSOR.decode(cursor) == (stamp, identifier)


@given(st.uuids(), st.integers(min_value=0, max_value=2**63 - 1))
def test_ids_and_sequence_numbers_round_trip_as_url_safe_text(identifier: UUID, number: int) -> None:
    assert URL_SAFE.fullmatch(ID_CURSOR.encode(identifier))
    assert ID_CURSOR.decode(ID_CURSOR.encode(identifier)) == identifier
    assert URL_SAFE.fullmatch(SEQ_CURSOR.encode(number))
    assert SEQ_CURSOR.decode(SEQ_CURSOR.encode(number)) == number


def test_a_time_in_another_zone_comes_back_as_the_same_instant_in_utc() -> None:
    local = STAMP.astimezone(timezone(timedelta(hours=2)))

    decoded, _ = TIME_ID_CURSOR.decode(TIME_ID_CURSOR.encode((local, ID)))

    assert decoded == local
    assert decoded.tzinfo is UTC


def test_cursors_are_compact() -> None:
    assert len(TIME_ID_CURSOR.encode((STAMP, ID))) == 34
    assert len(ID_CURSOR.encode(ID)) == 23
    assert len(SEQ_CURSOR.encode(42)) == 12


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "nope",
        "not-a-cursor",
        f"{STAMP.isoformat()}_{ID}",  # the old form
        f"{STAMP.isoformat().replace('+', ' ')}_{ID}",  # the old form through an unencoded query string
        str(ID),
        "A" * 10_000,
        "a b",
        "é",
        "\x00",
    ],
)
def test_garbage_is_refused(cursor: str) -> None:
    for codec in (TIME_ID_CURSOR, ID_CURSOR, SEQ_CURSOR):
        with pytest.raises(InvalidInputError, match=r"^The cursor is not valid\.$"):
            codec.decode(cursor)


def test_tampered_cursors_are_refused() -> None:
    issued = TIME_ID_CURSOR.encode((STAMP, ID))
    record = base64.urlsafe_b64decode(issued + "==")
    standard = base64.b64encode(b"\xfb\xff" + record).decode()  # '+' and '/': the other base64 alphabet
    tampered = [
        issued[:-1],  # truncated
        issued + "A",  # extended
        issued + "==",  # padded
        issued[:-1] + chr(ord(issued[-1]) + 1),  # non-canonical: the same bytes spelt another way
        _raw(b"\x09" + record[1:]),  # an unknown kind
        _raw(record + b"\x00"),  # a field too many
        _raw(struct.pack(">Bq16s", 1, 2**63 - 1, ID.bytes)),  # a time past year 9999
        standard,
    ]
    for cursor in tampered:
        with pytest.raises(InvalidInputError):
            TIME_ID_CURSOR.decode(cursor)


def test_a_cursor_of_one_kind_is_refused_by_another() -> None:
    with pytest.raises(InvalidInputError):
        ID_CURSOR.decode(TIME_ID_CURSOR.encode((STAMP, ID)))
    with pytest.raises(InvalidInputError):
        TIME_ID_CURSOR.decode(SEQ_CURSOR.encode(7))
    with pytest.raises(InvalidInputError):
        SEQ_CURSOR.decode(ID_CURSOR.encode(ID))


def test_a_negative_sequence_number_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        SEQ_CURSOR.decode(_raw(struct.pack(">Bq", 3, -1)))
