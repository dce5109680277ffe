"""Wire types several resources share."""

from typing import Annotated

import msgspec
from litestar.params import QueryParameter

from support.domain.knowledge import MAX_METADATA_ENTRIES, MAX_METADATA_KEY_LENGTH, MAX_METADATA_VALUE_LENGTH

MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_METADATA_KEY_LENGTH)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=MAX_METADATA_VALUE_LENGTH)]
# Free-form string pairs kept with a resource: bounded, so no request can make a stored row arbitrarily large.
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    msgspec.Meta(
        max_length=MAX_METADATA_ENTRIES,
        description=(
            f"Up to {MAX_METADATA_ENTRIES} string pairs; keys of 1 to {MAX_METADATA_KEY_LENGTH} characters, "
            f"values of at most {MAX_METADATA_VALUE_LENGTH}."
        ),
    ),
]

# The `cursor` query parameter of every paged list.
PageCursor = Annotated[
    str | None,
    QueryParameter(
        description=(
            "The `next_cursor` of the previous page, passed unchanged: an opaque URL-safe string (do not parse or "
            "build one). Left out for the first page."
        )
    ),
]
