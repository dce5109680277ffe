"""The event id a feed or socket resumes after: one reading for the SSE header and query and the socket's query."""

import pytest

from support.api.streaming import resume_after
from support.domain.errors import InvalidInputError


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("42", 42), (" 7\t", 7), ("007", 7), ("9" * 20, int("9" * 20))]
)
def test_whole_numbers_are_read(text: str, expected: int) -> None:
    assert resume_after(text, "Last-Event-ID") == expected


# Python's int() takes all of these; a client sending them has a bug worth hearing about.
@pytest.mark.parametrize("text", ["", " ", "-1", "+3", "1_000", "1.0", "٣", "abc", "0x10", "1" * 21, "9" * 5000])
def test_anything_else_is_invalid_input_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInputError, match=r"^last_event_id is the id of an event"):
        resume_after(text, "last_event_id")
