"""Redaction of secrets: what a customer must never find in the assistant's memory, the model's prompt or a log.

``redact`` replaces card numbers (only digit runs that pass the Luhn check, so order numbers survive), card
security codes, passwords and PINs, one-time codes, API keys and tokens, private keys, IBANs (mod-97 checked)
and US social security numbers with a placeholder that says what was there (``[card number]``), so the text
still reads naturally. Email addresses and phone numbers are contact details, not secrets: they are kept.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

CARD_NUMBER = "[card number]"
CARD_CODE = "[card security code]"
PASSWORD = "[password]"  # noqa: S105 - a placeholder, not a secret
PIN = "[PIN]"
ONE_TIME_CODE = "[one-time code]"
SECRET = "[secret]"  # noqa: S105 - a placeholder
PRIVATE_KEY = "[private key]"
IBAN = "[IBAN]"
SSN = "[SSN]"
PLACEHOLDERS = (CARD_NUMBER, CARD_CODE, PASSWORD, PIN, ONE_TIME_CODE, SECRET, PRIVATE_KEY, IBAN, SSN)

_CARD_DIGITS = (13, 19)
_IBAN_LENGTH = (15, 34)
_IBAN_MODULUS = 97


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum that every payment card number carries."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2  # noqa: PLR2004 - the Luhn doubling rule
        total += value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """Whether ``text`` (spaces allowed) is an IBAN with a valid ISO 13616 check (mod 97 == 1)."""
    compact = re.sub(r"\s", "", text).upper()
    if not (_IBAN_LENGTH[0] <= len(compact) <= _IBAN_LENGTH[1]) or not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % _IBAN_MODULUS == 1


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]


def _keep_label(placeholder: str) -> Callable[[re.Match[str]], str]:
    """Keep what introduced the secret ("my password is ") and replace only the secret itself."""
    return lambda match: match.group("label") + placeholder


def _card(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    # Only Visa issued 13-digit numbers, all starting with 4; a 13-digit run starting with 1 or 2 is a millisecond
    # timestamp (a tenth of which pass the Luhn check: job logs read "touched: [card number]").
    if len(digits) == _CARD_DIGITS[0] and not digits.startswith("4"):
        return text
    if _CARD_DIGITS[0] <= len(digits) <= _CARD_DIGITS[1] and luhn_valid(digits):
        return CARD_NUMBER
    return text


def _iban(match: re.Match[str]) -> str:
    text = match.group(0)
    return IBAN if iban_valid(text) else text


# "cvv 123", "cvv: 123", "code is 123456"; passwords need an explicit "is", ":" or "=" ("password reset link").
_SEPARATOR = r"\s*(?:(?:is|was)\s*)?[:=#]?\s*"
_STATED = r"\s*(?:(?:is|was)(?:\s+now)?\s*[:=]?|[:=])\s*"
# Words that follow "my password is" without being the password.
_COMMON_WORDS_AFTER_LABEL = (
    r"(?!(?:not|no|wrong|incorrect|correct|right|invalid|expired|too|very|the|a|an|my|same|different|still|being|"
    r"been|reset|changed|working|weak|strong|long|short|case|required|needed|it|that|this|definitely|probably)\b)"
)
# Order matters: whole blocks and prefixed tokens first, so a later rule never sees half a key.
_RULES = (
    _Rule(
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL),
        lambda _: PRIVATE_KEY,
    ),
    # Tokens whose shape says what they are: provider API keys, GitHub/Slack/AWS/Google tokens, JWTs, this
    # service's own API keys (sk_) and customer tokens (ct_).
    _Rule(
        re.compile(
            r"\b(?:sk|pk|rk)[-_](?:live|test|ant|proj)?[-_]?[A-Za-z0-9_-]{16,}"
            r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"
            r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
            r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
            r"|\bAIza[0-9A-Za-z_-]{30,}"
            r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
            r"|\bct_[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
        ),
        lambda _: SECRET,
    ),
    _Rule(re.compile(r"(?P<label>\bBearer\s+)[A-Za-z0-9._~+/=-]{12,}"), _keep_label(SECRET)),
    _Rule(
        re.compile(
            r"(?P<label>\b(?:api[ _-]?key|secret(?:[ _-]?key)?|access[ _-]?(?:key|token)|auth[ _-]?token|token|"
            r"client[ _-]?secret)" + _SEPARATOR + r")(?=[^\s\"']*\d)[^\s\"',;]{8,}",
            re.IGNORECASE,
        ),
        _keep_label(SECRET),
    ),
    _Rule(
        re.compile(
            r"(?P<label>\b(?:(?:verification|confirmation|login|sign[- ]?in|2fa|two[- ]factor|one[- ]time|"
            r"otp|sms)\s+code|otp)" + _SEPARATOR + r")\d{4,8}\b",
            re.IGNORECASE,
        ),
        _keep_label(ONE_TIME_CODE),
    ),
    _Rule(
        re.compile(
            r"(?P<label>\b(?:cvv2?|cvc2?|cid|card\s+(?:security\s+|verification\s+)?code|security\s+code)"
            + _SEPARATOR
            + r")\d{3,4}\b",
            re.IGNORECASE,
        ),
        _keep_label(CARD_CODE),
    ),
    _Rule(
        re.compile(
            r"(?P<label>\b(?:password|passwort|passcode|passphrase|passwd|pwd|pw)"
            + _STATED
            + r")"
            + _COMMON_WORDS_AFTER_LABEL
            + r"(?:\"[^\"]+\"|'[^']+'|[^\s\"']*[^\s\"'.,;!?])",
            re.IGNORECASE,
        ),
        _keep_label(PASSWORD),
    ),
    _Rule(re.compile(r"(?P<label>\bPIN(?:\s+(?:code|number))?" + _SEPARATOR + r")\d{4,8}\b"), _keep_label(PIN)),
    _Rule(re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b"), _iban),
    # 13 to 19 digits, optionally grouped by single spaces or dashes; replaced only when the Luhn check passes.
    _Rule(re.compile(r"(?<![\w+])\d(?:[ -]?\d){12,18}(?![\w])"), _card),
    _Rule(re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), lambda _: SSN),
)


def redact(text: str) -> str:
    """``text`` with every secret replaced by a placeholder that names what it was."""
    for rule in _RULES:
        text = rule.pattern.sub(rule.replace, text)
    return text


def contains_secret(text: str) -> bool:
    """Whether :func:`redact` would change ``text``."""
    return redact(text) != text
