"""Wire types several resources share."""

from typing import Annotated

import msgspec

MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY_LENGTH = 100
MAX_METADATA_VALUE_LENGTH = 1000

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
