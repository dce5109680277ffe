"""Redaction of secrets: what a customer must never find in the assistant's memory, the model's prompt or a log.

``redact`` replaces card numbers (only digit runs that pass the Luhn check, so order numbers survive), card
security codes, passwords and PINs, one-time codes, API keys and tokens, private keys, IBANs (mod-97 checked)
and US social security numbers with a placeholder that says what was there (``[card number]``), so the text
still reads naturally. Email addresses and phone numbers are contact details, not secrets: they are kept.

Passwords are found in English, German, French, Spanish, Italian, Portuguese and Dutch. After an explicit "is" or
":" ("my password is Secret Sauce", "Mein Passwort ist Sonne123", "pass: Hunter2") the value runs to the end of
the clause, unless it is ordinary prose ("my password is not working"); stated any other way ("password hunter2",
"I set my password to Hunter2", "the password I use is Kitty123") it is taken only when it looks like a password
(a digit, a symbol or a case change). Spaced SSNs ("123 45 6789") are taken only after "SSN" or "social security".
"""

import itertools
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


# "cvv 123", "cvv: 123", "code is 123456".
_SEPARATOR = r"\s*(?:(?:is|was)\s*)?[:=#]?\s*"

# Passwords. Ordinary prose mentions passwords all the time ("password reset link", "my password is not working"),
# so how sure a rule must be that a value is a password depends on how plainly it was stated.
_PW_NOUN = (
    r"(?<!\[)\b(?:password|passwort|kennwort|passcode|passphrase|passwd|pwd|pw|mot\s+de\s+passe|contrase[ñn]a|"
    r"senha|wachtwoord)\b"  # English, German, French, Spanish, Italian (password), Portuguese, Dutch
)
# "is"/"was" (optionally "now") in those languages, as a whole word: without the \b, German "ist" was read as
# "is" followed by a password "t". Unaccented Italian/Portuguese "e" is left out: it is also "e-mail".
_IS = r"(?:is|was|ist|war|est|es|era|è|é)\b(?:\s+(?:now|jetzt|maintenant|ahora|ora|agora|nu)\b)?"
# An explicit statement: "password is", "password was now", "password is:", "password:". A bare "pass:" is among
# the relaxed labels below ("Boarding pass: Gate 12" is no secret, "pass: Hunter2" is).
_STATED = r"(?:" + _PW_NOUN + r"(?:\s+" + _IS + r"(?:\s*:\s*|\s+)|\s*:\s*))"
# Where a word ends for the prose checks below: at a space, or punctuation and then a space or the end. A plain \b
# also ended "nicht" in "nicht-mehr-2024" and "Fine" in "Fine.Day.77", and let those passwords through.
_WORD_END = r"(?=[.,;:!?]*(?:\s|$))"
# Words that follow "my password is" or "password:" without being the password (in the languages above), among
# them the start of a question: "Problem with my password: how do I reset it?".
_COMMON_WORDS_AFTER_LABEL = (
    r"(?!(?:not|no|wrong|incorrect|invalid|expired|too|very|the|a|an|my|same|different|still|being|"
    r"been|reset|changed|working|case|required|needed|it|that|this|definitely|probably|locked|blocked|"
    r"how|what|why|where|when|can|could|i|we|you|please|help|does|doesn't|don't|won't|can't|isn't|keeps|"
    r"nicht|falsch|abgelaufen|zu|pas|faux|fausse|incorrecte|expiré|incorrecta|caducada|non|sbagliata|errata|"
    r"scaduta|não|errada|incorreta|inválida|expirada|niet|fout|verkeerd|onjuist|verlopen|"
    # Found by a review: "Password: sent via SMS", "pw: see above", "is over 12 characters long", "trop court"
    r"sent|forgot|forgotten|see|above|below|attached|unknown|lost|over|under|identical|similar|longer|shorter|more|"
    r"less|at|only|trop|muy|demasiado|vergeten|seit|gesperrt|gestern|oublié|olvidada|olvidado|esquecida|bloqueado)"
    + _WORD_END
    + r")"
)
# Words that end the clause a password was stated in: "my password is hunter2 and it fails", "... hunter2 now",
# "password: Hunter2 doesn't work".
_CLAUSE_END_WORD = (
    r"(?:and|but|or|so|because|since|though|although|if|when|while|which|that|then|please|thanks|thank|for|on|in|"
    r"at|with|from|now|again|anymore|here|there|enough|i|it|is|was|does|did|will|keeps|still|not|\w+n['\u2019]t|"
    r"und|aber|et|mais|y|pero|ma|mas|en|maar)\b"
)
# A verdict that is prose when it stands alone ("my password is correct", "... strong enough") but may begin a
# passphrase ("My password: correct horse battery staple").
_VERDICT_ALONE = (
    r"(?!(?:correct|right|weak|strong|long|short|simple|fine|ok|okay|good|bad|valid|secure|safe)"
    + _WORD_END
    + r"(?![ \t]+(?!"
    + _CLAUSE_END_WORD
    + r")\w))"
)
# Redacting twice changes nothing: "password: [password] ok" must not become "password: [password]".
_NOT_A_PLACEHOLDER = r"(?!" + "|".join(re.escape(placeholder) for placeholder in PLACEHOLDERS) + r")"
# One word of a password: no spaces or quotes, and its last character not the sentence's punctuation.
_VALUE_WORD = r"[^\s\"']{0,63}[^\s\"'.,;!?]"
_QUOTED = r"\"[^\"\n]{1,64}\"|'[^'\n]{1,64}'|“[^”\n]{1,64}”"
# After an explicit "is" or ":", a passphrase runs to the end of the clause (, ; . ! ? a line break, or a word in
# _CLAUSE_END_WORD), six words at most: "My password: correct horse battery staple", "my password is Secret Sauce".
_PHRASE = _VALUE_WORD + r"(?:[ \t]+(?!" + _CLAUSE_END_WORD + r")" + _VALUE_WORD + r"){0,5}"
# Without "is" or ":" a password is only taken when it looks like one (``_looks_like_password``), after the word
# itself ("password hunter2"), after "set/changed … password to" or "password was reset to" ("I set my password
# to Hunter2"), after up to four words and an "is" ("the password I use is Kitty123"), or after "is" and an adverb
# ("the password is still Hunter2"; "still" alone is prose).
_CHANGE = r"(?:set|change[ds]?|reset|update[ds]?|switch(?:ed)?)"
_RELAXED_PASSWORD_LABELS = (
    _PW_NOUN + r"(?:\s+[\w']+){1,4}?\s+" + _IS + r"\s+",
    _PW_NOUN + r"\s+" + _IS + r"\s+(?:definitely|probably|still|just|actually|also)\s+",
    r"\b" + _CHANGE + r"\s+(?:[\w']+\s+){0,2}?" + _PW_NOUN + r"\s+to\s+",
    _PW_NOUN + r"\s+(?:was|is|has\s+been|got)\s+" + _CHANGE + r"\s+to\s+",
    _PW_NOUN + r"\s+",
    r"\bpass\s*:\s*",  # "login: ada / pass: Hunter2"
)
_PASSWORD_LENGTH = (4, 64)
_PASSWORD_SYMBOLS = frozenset("!#$%^&*+=~_|")


def _looks_like_password(value: str) -> bool:
    """Whether a word given without "is" or ":" reads as a password rather than prose.

    It has a digit, a symbol or a change from lower to upper case ("hunter2", "hunter!", "hunTer"), is 4 to 64
    characters long, and is not an email address or a link.
    """
    if not (_PASSWORD_LENGTH[0] <= len(value) <= _PASSWORD_LENGTH[1]) or "@" in value or "://" in value:
        return False
    has_case_change = any(a.islower() and b.isupper() for a, b in itertools.pairwise(value))
    return any(char.isdigit() for char in value) or has_case_change or bool(_PASSWORD_SYMBOLS & set(value))


def _password_if_it_looks_like_one(match: re.Match[str]) -> str:
    return match.group("label") + PASSWORD if _looks_like_password(match.group("value")) else match.group(0)


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
            r"otp|sms)\s+code|otp|code\s+(?:you|u)\s+(?:just\s+)?(?:sent|texted|emailed)(?:\s+me)?)"
            + _SEPARATOR
            + r")\d{4,8}\b",
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
    # "My password is hunter2", "password: correct horse battery staple", "Mein Passwort ist Sonne123".
    _Rule(
        re.compile(
            r"(?P<label>"
            + _STATED
            + r")"
            + _NOT_A_PLACEHOLDER
            + _COMMON_WORDS_AFTER_LABEL
            + _VERDICT_ALONE
            + r"(?:"
            + _QUOTED
            + r"|"
            + _PHRASE
            + r")",
            re.IGNORECASE,
        ),
        _keep_label(PASSWORD),
    ),
    # "pw=S3cret!x": one word (log lines and URLs write key=value pairs one after the other).
    _Rule(
        re.compile(r"(?P<label>" + _PW_NOUN + r"\s*=\s*)(?:" + _QUOTED + r"|" + _VALUE_WORD + r")", re.IGNORECASE),
        _keep_label(PASSWORD),
    ),
    *(
        _Rule(
            re.compile(r"(?P<label>" + label + r")(?P<value>" + _VALUE_WORD + r")", re.IGNORECASE),
            _password_if_it_looks_like_one,
        )
        for label in _RELAXED_PASSWORD_LABELS
    ),
    _Rule(re.compile(r"(?P<label>\bPIN(?:\s+(?:code|number))?" + _SEPARATOR + r")\d{4,8}\b"), _keep_label(PIN)),
    # A lower-case "pin" only as the customer's own ("my pin is 4821"): "pin 12345 of the connector" is hardware.
    _Rule(
        re.compile(
            r"(?P<label>\b(?:my|card|bank)\s+pin(?:\s+(?:code|number))?" + _SEPARATOR + r")\d{4,8}\b", re.IGNORECASE
        ),
        _keep_label(PIN),
    ),
    _Rule(re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b"), _iban),
    # 13 to 19 digits, optionally grouped by single spaces or dashes; replaced only when the Luhn check passes.
    _Rule(re.compile(r"(?<![\w+])\d(?:[ -]?\d){12,18}(?![\w])"), _card),
    _Rule(re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), lambda _: SSN),
    # Spaced or run together ("123 45 6789", "123456789") only after "SSN" or "social security": unlabelled, such
    # digit groups are phone numbers, amounts and order numbers.
    _Rule(
        re.compile(
            r"(?P<label>\b(?:SSN|social\s+security(?:\s+(?:number|no\.?|#))?)"
            + _SEPARATOR
            + r")(?!000|666|9\d\d)\d{3}[ .]?(?!00)\d{2}[ .]?(?!0000)\d{4}\b",
            re.IGNORECASE,
        ),
        _keep_label(SSN),
    ),
)


# What any rule above needs somewhere in the text: its keyword, a token prefix, nine digits in a row (cards, SSNs)
# or an IBAN's start. Most text (questions, log lines) has none, and a cheap check then replaces the 20-odd rules:
# redact runs on every log line and several times per turn (2.3x slower without it once the password rules grew).
_SECRET_WORDS = (
    "bearer", "key", "secret", "token", "code", "otp", "cvv", "cvc", "cid", "pass", "pwd", "pw", "kennwort",
    "contrase", "senha", "wachtwoord", "pin", "ssn", "social",
)  # fmt: skip
_SECRET_SHAPES = re.compile(
    r"BEGIN [A-Z ]*PRIVATE KEY|\b(?:sk|pk|rk)[-_]|\bgh[pousr]_|github_pat_|\bxox[abposr]-|\b(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|\bAIza|\beyJ|\bct_|\b[A-Z]{2}\d{2}|\d(?:[ .-]?\d){8}"
)


def _may_hold_a_secret(text: str) -> bool:
    """Whether any rule could match: a keyword (substring search), a token prefix, nine digits, an IBAN's start."""
    lowered = text.lower()
    return any(word in lowered for word in _SECRET_WORDS) or _SECRET_SHAPES.search(text) is not None


def redact(text: str) -> str:
    """``text`` with every secret replaced by a placeholder that names what it was."""
    if not _may_hold_a_secret(text):
        return text
    for rule in _RULES:
        text = rule.pattern.sub(rule.replace, text)
    return text


def contains_secret(text: str) -> bool:
    """Whether :func:`redact` would change ``text``."""
    return redact(text) != text
