"""Knowledge-base entities: extracted documents, their sections and the chunks that get indexed."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Section:
    """A run of body text under one heading path (outermost heading first)."""

    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class ExtractedDocument:
    """A document normalised to text with its structure kept: an optional title and ordered sections."""

    title: str | None
    sections: tuple[Section, ...]

    @property
    def is_empty(self) -> bool:
        """True when no section carries any non-whitespace text."""
        return not any(section.text.strip() for section in self.sections)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A retrievable piece of a document, small enough for the embedder's token budget."""

    ordinal: int
    heading_path: tuple[str, ...]
    text: str
    token_count: int

    def context_text(self, title: str) -> str:
        """The text that is embedded and indexed: document title and heading path, then the chunk body."""
        path = " > ".join((title, *self.heading_path)) if title else " > ".join(self.heading_path)
        return f"{path}\n\n{self.text}" if path else self.text
