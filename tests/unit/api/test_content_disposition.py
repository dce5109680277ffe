"""Attachment downloads name the file per RFC 6266, whatever characters its stored name holds."""

from support.api.controllers.conversations import content_disposition
from support.domain.conversations import clean_filename


def test_a_non_ascii_name_gets_an_ascii_fallback_and_the_exact_name_encoded() -> None:
    assert content_disposition("résumé 日本.pdf") == (
        "attachment; filename=\"r_sum_ __.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%E6%97%A5%E6%9C%AC.pdf"
    )


def test_quotes_backslashes_and_percent_signs_do_not_reach_the_fallback() -> None:
    assert (
        content_disposition('a"b\\c%41.txt')
        == "attachment; filename=\"a_b_c_41.txt\"; filename*=UTF-8''a%22b%5Cc%2541.txt"
    )


def test_a_name_stored_with_control_characters_is_cleaned_on_the_way_out() -> None:
    header = content_disposition("x\r\nSet-Cookie: a=1\x00\t.txt")

    assert header == "attachment; filename=\"xSet-Cookie: a=1.txt\"; filename*=UTF-8''xSet-Cookie%3A%20a%3D1.txt"
    assert content_disposition("\r\n") == "attachment; filename=\"file\"; filename*=UTF-8''file"


def test_invisible_format_characters_cannot_disguise_a_files_extension() -> None:
    # U+202E (right-to-left override) would show "invoiceexe.pdf"; zero-width spaces hide in the name.
    assert clean_filename("invoice\u202efdp.exe") == "invoicefdp.exe"
    assert clean_filename("re\u200bport\u2066.txt\u2069") == "report.txt"
    assert clean_filename("\u202e") == "file"
    assert clean_filename("résumé 日本.pdf") == "résumé 日本.pdf"  # letters of any script stay
