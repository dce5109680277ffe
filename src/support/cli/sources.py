"""Knowledge sources on disk: files, folders, Markdown with front matter, and JSONL exports."""

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from support.application.knowledge import IngestRequest, file_title, parse_jsonl
from support.domain.errors import InvalidInputError
from support.domain.knowledge import content_type_for_filename

SAMPLE_PREFIX = "sample:"


class SourceError(ValueError):
    """A source file cannot be read; the message names it."""


def count_sources(paths: list[Path]) -> int:
    """How many documents ``iter_sources`` will yield (JSONL lines count one each)."""
    total = 0
    for path in _files(paths):
        if path.suffix.lower() == ".jsonl":
            # Lines as parse_jsonl reads them (split at "\n" only; blank, Unicode spaces included, skipped).
            text = path.read_bytes().decode("utf-8-sig", "replace")
            total += sum(1 for line in text.split("\n") if line.strip())
        else:
            total += 1
    return total


def iter_sources(paths: list[Path]) -> Iterator[IngestRequest]:
    """One request per file, or per line of a ``.jsonl`` file.

    A line is ``{id, text, title?, url?, tags?, content_type?, audience?, metadata?}`` (``parse_jsonl``); a line
    that is not such a record stops the run, naming the file and the line.
    """
    for path in _files(paths):
        if path.suffix.lower() == ".jsonl":
            yield from _jsonl(path)
        else:
            # The resolved path: the same file is the same document however its path was typed.
            yield _file(path, external_id=str(path.resolve()))


def sample_sources() -> Iterator[IngestRequest]:
    """The fictional Northwind Supply help center shipped with the package (its front matter gives title, url, tags)."""
    folder = resources.files("support.sample_data") / "helpcenter"
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".md"):
            external_id = SAMPLE_PREFIX + entry.name.removesuffix(".md")
            yield IngestRequest(content=entry.read_bytes(), content_type="text/markdown", external_id=external_id)


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and _is_source(child):
                    yield child
        elif path.is_file():
            if not _is_source(path):
                # Found before anything is ingested (count_sources), as a missing path is.
                raise SourceError(f"{path}: unsupported file type (use .txt, .md, .html, .pdf or .jsonl)")
            yield path
        else:
            raise SourceError(f"{path}: no such file or folder")


def _is_source(path: Path) -> bool:
    return content_type_for_filename(path.name) is not None or path.suffix.lower() == ".jsonl"


def _file(path: Path, *, external_id: str) -> IngestRequest:
    """The file as the API's upload takes it: its bytes, which the extractor reads (encoding, Markdown front matter).

    A file that cannot be read is a failed document, and the run goes on.
    """
    content_type = content_type_for_filename(path.name) or "text/plain"  # _files yields supported types only
    fallback = file_title(path.name)
    try:
        data = path.read_bytes()
    except OSError as error:
        unreadable = f"{path}: the file could not be read ({error.strerror or type(error).__name__})."
        return IngestRequest(b"", content_type, external_id=external_id, fallback_title=fallback, unreadable=unreadable)
    return IngestRequest(content=data, content_type=content_type, external_id=external_id, fallback_title=fallback)


def _jsonl(path: Path) -> list[IngestRequest]:
    try:
        return parse_jsonl(path.read_bytes())
    except InvalidInputError as error:
        raise SourceError(f"{path}: {error.message}") from None
