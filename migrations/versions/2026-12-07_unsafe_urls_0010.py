"""Document and citation URLs that are not absolute http(s) URLs are cleared.

Since 2026-12-07 a document's url must be an absolute http:// or https:// URL with a host (customers see it as a
citation's link: a ``javascript:`` URL would run script in the page that shows it). Documents stored before kept
whatever url they had, and so did the citations of the replies that quoted them, which the transcript still
serves. Both are cleared here (set to null: the document and the citation stay, without a link); the check is
the API's pattern in PostgreSQL's regular expressions. Downgrading cannot bring the urls back, and does nothing.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# http(s)://, a host part without spaces, control characters, "@" or "\", then anything without spaces or control
# characters: support.domain.knowledge.DOCUMENT_URL_PATTERN (case-insensitive), its excluded characters spelled out
# as it spells them (PostgreSQL's [:space:] depends on the locale), and its length limit. What the API checks
# beyond the pattern (that the host part holds a host, a valid port) is not repeated: such a url is still http(s),
# and no script can run from it.
_NOT_IN_URL = r"\x01-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_SAFE = rf"'^https?://[^/?#@\\{_NOT_IN_URL}]+([/?#][^{_NOT_IN_URL}]*)?$'"
_MAX_LENGTH = 2000


def upgrade() -> None:
    unsafe = f"url !~* {_SAFE} OR length(url) > {_MAX_LENGTH}"
    op.execute(f"UPDATE kb_documents SET url = NULL WHERE url IS NOT NULL AND ({unsafe})")  # noqa: S608
    # Each citation of a stored reply carries its document's url as it was then.
    op.execute(
        f"""
        UPDATE messages SET citations = (
            SELECT jsonb_agg(
                CASE WHEN jsonb_typeof(c -> 'url') = 'string'
                          AND (NOT (c ->> 'url') ~* {_SAFE} OR length(c ->> 'url') > {_MAX_LENGTH})
                     THEN jsonb_set(c, '{{url}}', 'null') ELSE c END
                ORDER BY position
            )
            FROM jsonb_array_elements(citations) WITH ORDINALITY AS t(c, position)
        )
        WHERE jsonb_typeof(citations) = 'array' AND EXISTS (
            SELECT 1 FROM jsonb_array_elements(citations) AS c
            WHERE jsonb_typeof(c -> 'url') = 'string'
              AND (NOT (c ->> 'url') ~* {_SAFE} OR length(c ->> 'url') > {_MAX_LENGTH})
        )
        """  # noqa: S608 - constants only
    )


def downgrade() -> None:
    pass  # the cleared urls are gone
