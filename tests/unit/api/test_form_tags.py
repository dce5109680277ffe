"""An upload form's comma-separated tags: the JSON body's rule, and a documented pattern that never refuses less."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.exceptions import ValidationException

from support.api.controllers.knowledge import TAGS_FIELD_PATTERN, form_tags


def test_the_field_is_split_trimmed_and_held_to_the_tag_limits() -> None:
    assert form_tags(" billing, ,Refunds ,") == ["billing", "Refunds"]
    assert form_tags(None) == []
    with pytest.raises(ValidationException) as too_long:
        form_tags("ok," + "t" * 101)
    assert too_long.value.extra == [{"message": "Expected `str` of length <= 100", "key": "tags[1]", "source": "body"}]
    with pytest.raises(ValidationException) as too_many:
        form_tags(",".join(str(n) for n in range(51)))
    assert too_many.value.extra == [{"message": "Expected `array` of length <= 50", "key": "tags", "source": "body"}]


@settings(max_examples=200)
@given(st.from_regex(TAGS_FIELD_PATTERN, fullmatch=True))
def test_every_field_the_document_calls_valid_is_accepted(field: str) -> None:
    form_tags(field)
