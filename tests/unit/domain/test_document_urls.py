"""A document's url is shown to customers as a citation link: absolute http(s) URLs only."""

import re

import pytest

from support.domain.errors import InvalidInputError
from support.domain.knowledge import DOCUMENT_URL_PATTERN, MAX_DOCUMENT_URL_LENGTH, validate_document_url


@pytest.mark.parametrize(
    "url",
    [
        "https://help.example.com/articles/returns",
        "http://help.example.com",
        "HTTPS://Help.Example.com/a?b=c#d",
        "https://help.example.com:8443/a",
        "http://[2001:db8::1]:8080/docs",
        "https://help.example.com/artículos/devoluciones",
        "https://help.example.com/a@b/c",
        "https://help.example.com/" + "a" * (MAX_DOCUMENT_URL_LENGTH - 25),
    ],
)
def test_absolute_http_urls_are_accepted_as_they_are(url: str) -> None:
    assert validate_document_url(url) == url
    assert re.search(DOCUMENT_URL_PATTERN, url)


@pytest.mark.parametrize("url", [None, ""])
def test_no_url_is_none(url: str | None) -> None:
    assert validate_document_url(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(document.cookie)",
        "java\tscript:alert(1)",
        "vbscript:msgbox(1)",
        "data:text/html,<script>alert(1)</script>",
        "file:///etc/passwd",
        "ftp://files.example.com/a",
        "mailto:help@example.com",
        "/articles/returns",
        "//evil.example/returns",
        "help.example.com/returns",
        "https:/help.example.com",
        "https:\\\\evil.example",
        "https://",
        "http:///path",
        "https://help.example.com@evil.example/",
        "https://user:password@help.example.com/",
        "https://help.example.com\\@evil.example/",
        " https://help.example.com/",
        "https://help.example.com/ ",
        "https://help.example.com/a b",
        "https://help.example.com/\n",
        "https://help.example.com/\x00",
        "https://help.example.com/\x7f",
        "   ",
    ],
)
def test_anything_else_is_refused_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidInputError, match=r"^url: must be an absolute http:// or https:// URL"):
        validate_document_url(url)


@pytest.mark.parametrize("url", ["http://:80/", "http://help.example.com:99999/", "http://[::1/"])
def test_a_url_the_pattern_lets_through_is_still_checked_for_a_host(url: str) -> None:
    with pytest.raises(InvalidInputError, match=r"^url: "):
        validate_document_url(url)


def test_a_url_that_is_too_long_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"^url: at most 2000 characters"):
        validate_document_url("https://help.example.com/" + "a" * MAX_DOCUMENT_URL_LENGTH)


@pytest.mark.parametrize("space", ["\x85", "\xa0", "\u2028", "\u3000", "\ufeff", "\x9f"])
def test_spaces_either_regex_engine_knows_are_refused_by_the_pattern_itself(space: str) -> None:
    # The OpenAPI pattern is read by ECMAScript engines and by fuzzers as well as by Python: it names every space
    # it refuses instead of relying on "\s", which is U+0085 in Python and U+FEFF in ECMAScript.
    url = f"https://help.example.com/a{space}b"
    assert re.search(DOCUMENT_URL_PATTERN, url) is None
    with pytest.raises(InvalidInputError):
        validate_document_url(url)
