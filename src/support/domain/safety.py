"""Recognising text that tries to instruct the assistant (prompt injection) inside content that is only data."""

import re

_INSTRUCTION_PATTERNS = [
    (
        r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}\b(previous|prior|above|earlier|all|any|your)\b"
        r"[^.\n]{0,30}\b(instructions?|rules|prompts?|guidelines|directions)\b"
    ),
    r"\byou are now\b",
    r"\b(new|updated|real) (system )?instructions?\s*:",
    r"\b(reveal|print|show|repeat|output)\b[^.\n]{0,30}\b(system prompt|hidden prompt|instructions)\b",
    r"\bsystem prompt\b",
    r"\b(act|behave|pretend) as (if you were |an? )?(unrestricted|jailbroken|dan|developer mode)\b",
    r"<\|?(im_start|im_end|system|endoftext)\|?>",
    r"^\s*#{2,}\s*(system|instruction)s?\b",
    r"\bdo not tell the (user|customer)\b",
    r"\b(always|must) (approve|grant|issue) (a |the )?(full )?refunds?\b",
]
_INSTRUCTION = re.compile("|".join(f"(?:{pattern})" for pattern in _INSTRUCTION_PATTERNS), re.IGNORECASE | re.MULTILINE)
_CONTEXT_CHARS = 60
MAX_FLAGS = 20


def find_instruction_like_passages(text: str) -> list[str]:
    """Short excerpts around passages that address the assistant instead of the reader (at most ``MAX_FLAGS``)."""
    excerpts: list[str] = []
    for match in _INSTRUCTION.finditer(text):
        start = max(0, match.start() - _CONTEXT_CHARS)
        end = min(len(text), match.end() + _CONTEXT_CHARS)
        excerpt = " ".join(text[start:end].split())
        if excerpt not in excerpts:
            excerpts.append(excerpt)
        if len(excerpts) >= MAX_FLAGS:
            break
    return excerpts
