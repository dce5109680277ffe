"""Turn plain text, Markdown, HTML and PDF bytes into sections of clean text under their heading paths."""

import codecs
import io
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Final

import pypdf
import pypdf.errors
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from selectolax.lexbor import LexborHTMLParser, LexborNode

from support.domain.errors import InvalidInputError, UnsupportedContentTypeError
from support.domain.knowledge import ExtractedDocument, Section

PLAIN_TEXT: Final = "text/plain"
MARKDOWN: Final = "text/markdown"
HTML: Final = "text/html"
PDF: Final = "application/pdf"

_CANONICAL_CONTENT_TYPES: Final = {
    PLAIN_TEXT: PLAIN_TEXT,
    MARKDOWN: MARKDOWN,
    "text/x-markdown": MARKDOWN,
    "text/md": MARKDOWN,
    HTML: HTML,
    "application/xhtml+xml": HTML,
    PDF: PDF,
    "application/x-pdf": PDF,
}


def _parse_content_type(content_type: str) -> tuple[str | None, str | None]:
    """The canonical media type (None if unsupported) and the declared charset, if any."""
    media_type, *parameters = content_type.split(";")
    charset = None
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    return _CANONICAL_CONTENT_TYPES.get(media_type.strip().lower()), charset


class StructuredTextExtractor:
    """Extracts text with its heading structure from text/plain, text/markdown, text/html and application/pdf.

    Headings become section paths; the first H1 (or an HTML ``<title>``, or Markdown front matter ``title``)
    becomes the document title. HTML boilerplate (navigation, headers, footers, cookie banners, scripts)
    is dropped; lists and tables become one readable line per item or row.
    """

    def supports(self, content_type: str) -> bool:
        media_type, _ = _parse_content_type(content_type)
        return media_type is not None

    def extract(self, data: bytes, content_type: str) -> ExtractedDocument:
        media_type, charset = _parse_content_type(content_type)
        if media_type is None:
            supported = ", ".join(sorted(set(_CANONICAL_CONTENT_TYPES.values())))
            msg = f"Content type {content_type!r} is not supported; send one of {supported}."
            raise UnsupportedContentTypeError(msg)
        if media_type == PDF:
            return _extract_pdf(data)
        text = decode_text(data, charset)
        if media_type == MARKDOWN:
            return _extract_markdown(text)
        if media_type == HTML:
            return _extract_html(text)
        body = normalise_text(text)
        return ExtractedDocument(title=None, sections=(Section((), body),) if body else ())


# --- text decoding and normalisation ---------------------------------------------------------------------

_INVISIBLE_CHARACTERS = re.compile(
    # C0/C1 controls other than tab and newline, soft hyphen, zero-width space, word joiner, BOM.
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff]"
)
_UNUSUAL_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_RUN = re.compile(r"[ \t]+")
_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def decode_text(data: bytes, declared_charset: str | None = None) -> str:
    r"""Decode bytes as UTF-8 (BOM allowed); if that fails, the declared charset, then Windows-1252 / Latin-1.

    UTF-8 is tried first even when another charset is declared: valid UTF-8 is almost never anything
    else, and a wrong ``charset=iso-8859-1`` on UTF-8 content is a common server misconfiguration.
    Windows-1252 is what "Latin-1" text from the web and from Word actually is (its smart quotes live
    in 0x80-0x9F); Latin-1 takes the few bytes it leaves undefined. UTF-16 and UTF-32 come first when a byte-order
    mark says so, or when every other byte is zero (Windows editors save "Unicode" text as UTF-16; decoded as
    Windows-1252 it was stored as "ÿþ#\x00 \x00…").
    """
    wide = _wide_encoding(data)
    if wide is not None:
        try:
            return data.decode(wide)
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    candidates = [declared_charset] if declared_charset and _is_known_codec(declared_charset) else []
    for encoding in (*candidates, "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


# Byte-order marks of the wide encodings, UTF-32 first (its little-endian mark begins with UTF-16's).
_WIDE_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Without a mark: text files never hold zero bytes, UTF-16 ones do (the high byte of every ASCII character), and
# on one side of each pair: odd positions in little-endian, even ones in big-endian.
_WIDE_SAMPLE_BYTES: Final = 4096
_WIDE_SIDE_RATIO: Final = 4


def _wide_encoding(data: bytes) -> str | None:
    """``utf-32``/``utf-16`` (BOM-led), ``utf-16-le``/``utf-16-be`` (zero bytes on one side of each pair), else None."""
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):
            return encoding
    sample = data[:_WIDE_SAMPLE_BYTES]
    if len(data) % 2 or 0 not in sample:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if odd > _WIDE_SIDE_RATIO * even:
        return "utf-16-le"
    if even > _WIDE_SIDE_RATIO * odd:
        return "utf-16-be"
    return None


def _is_known_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def normalise_text(text: str) -> str:
    """NFC, one kind of space and newline, no invisible characters; paragraph breaks and indentation kept."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _UNUSUAL_SPACES.sub(" ", _INVISIBLE_CHARACTERS.sub("", text))
    lines = []
    for raw_line in text.split("\n"):
        line = raw_line.rstrip()
        body = line.lstrip(" \t")
        lines.append(line[: len(line) - len(body)] + _SPACE_RUN.sub(" ", body))
    return _BLANK_LINE_RUN.sub("\n\n", "\n".join(lines)).strip("\n")


def _collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


# --- building sections -----------------------------------------------------------------------------------


class _SectionBuilder:
    """Collects blocks of text under the current heading path and cuts a section at every heading."""

    def __init__(self, title: str | None) -> None:
        self.title = title
        self._title_heading_seen = False
        self._headings: list[tuple[int, str | None]] = []
        self._text_parts: list[str] = []
        self._in_line_run = False
        self._sections: list[Section] = []

    def heading(self, level: int, text: str) -> None:
        self._flush_section()
        text = _collapse_whitespace(text)
        while self._headings and self._headings[-1][0] >= level:
            self._headings.pop()
        is_title = level == 1 and not self._title_heading_seen and text == self.title
        if is_title:
            # The title heads every chunk already (Chunk.context_text); repeating it in the path adds nothing.
            self._title_heading_seen = True
        self._headings.append((level, None if is_title or not text else text))

    def block(self, text: str) -> None:
        """A paragraph-like block, separated from its neighbours by a blank line."""
        if text.strip():
            self._append(text, "\n\n")
            self._in_line_run = False

    def line(self, text: str) -> None:
        """A list item or table row: consecutive lines stay together as one paragraph."""
        if text.strip():
            self._append(text, "\n" if self._in_line_run else "\n\n")
            self._in_line_run = True

    def end_line_run(self) -> None:
        self._in_line_run = False

    def finish(self) -> ExtractedDocument:
        self._flush_section()
        return ExtractedDocument(title=self.title, sections=tuple(self._sections))

    def _append(self, text: str, separator: str) -> None:
        if self._text_parts:
            self._text_parts.append(separator)
        self._text_parts.append(text)

    def _flush_section(self) -> None:
        text = normalise_text("".join(self._text_parts))
        if text:
            path = tuple(heading for _, heading in self._headings if heading)
            self._sections.append(Section(heading_path=path, text=text))
        self._text_parts = []
        self._in_line_run = False


# --- Markdown --------------------------------------------------------------------------------------------

# Line ends may be CRLF (a file saved on Windows): its front matter was read as a rule and a heading.
# Its first line is a "key:" (a document that opens with a --- rule and has another one further down is Markdown).
_FRONT_MATTER = re.compile(
    r"\A---[ \t]*\r?\n(?P<body>(?=[A-Za-z_][\w-]*[ \t]*:).*?\r?\n)---[ \t]*(?:\r?\n|\Z)", re.DOTALL
)
_MARKDOWN = MarkdownIt("commonmark").enable("table")


def _extract_markdown(text: str) -> ExtractedDocument:
    text = unicodedata.normalize("NFC", text.lstrip("\ufeff"))
    fields: dict[str, str | list[str]] = {}
    front_matter = _FRONT_MATTER.match(text)
    parsed = parse_front_matter(front_matter["body"]) if front_matter else None
    if front_matter and parsed is not None:
        # Static-site exports carry YAML front matter; without this it would parse as a rule and a heading.
        text = text[front_matter.end() :]
        fields = parsed
    declared_title = fields.get("title")
    declared_url = fields.get("url")
    tokens = _MARKDOWN.parse(text)
    title = _collapse_whitespace(declared_title) if isinstance(declared_title, str) else ""
    builder = _SectionBuilder(title or _first_markdown_h1(tokens))
    _MarkdownRenderer(builder).render(tokens)
    document = builder.finish()
    return replace(
        document,
        url=(declared_url.strip() or None) if isinstance(declared_url, str) else None,
        tags=_front_matter_tags(fields.get("tags")),
    )


# --- front matter: the YAML that Jekyll, Hugo, Docusaurus and help-center exports put before the Markdown ---


def parse_front_matter(body: str) -> dict[str, str | list[str]] | None:
    """The top-level fields of a front matter block, keys lower-cased: text, or lists of text.

    YAML, read by PyYAML's ``BaseLoader``, which keeps every scalar as written (``title: 2026`` stays "2026",
    ``title: no`` stays "no"); nested mappings are left out. None when the block is not a YAML mapping: then it
    is the document's own text (a Markdown file may open with a ``---`` rule and a line such as "Note: returns are
    free: within 30 days", found by a review), kept rather than refused or dropped.
    """
    try:
        loaded = yaml.load(body, Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds only str, list, dict
    except yaml.YAMLError:
        return None
    if not isinstance(loaded, dict):
        return None
    fields: dict[str, str | list[str]] = {}
    for key, value in loaded.items():
        if isinstance(value, str):
            fields[str(key).lower()] = value.strip()  # a block scalar ends with its line break
        elif isinstance(value, list):
            fields[str(key).lower()] = [item.strip() for item in value if isinstance(item, str)]
    return fields


def _front_matter_tags(value: str | list[str] | None) -> tuple[str, ...]:
    """Tags as a list, or as one comma-separated value (``tags: billing, payments``, as the CLI has long read them)."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else value.split(",")
    return tuple(tag.strip() for tag in items if tag.strip())


def _first_markdown_h1(tokens: list[Token]) -> str | None:
    for index, token in enumerate(tokens[:-1]):
        if token.type == "heading_open" and token.tag == "h1":
            return _collapse_whitespace(_inline_markdown_text(tokens[index + 1])) or None
    return None


def _inline_markdown_text(token: Token) -> str:
    parts: list[str] = []
    for child in token.children or ():
        if child.type in {"text", "code_inline"}:
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline_markdown_text(child))  # its children are the alt text
    return "".join(parts)


class _MarkdownRenderer:
    """Walks markdown-it block tokens; lists keep their markers, code blocks their lines."""

    def __init__(self, builder: _SectionBuilder) -> None:
        self._builder = builder
        self._heading_level: int | None = None
        self._list_depth = 0
        self._pending_marker: str | None = None
        self._table_cells: list[str] | None = None
        self._row_width = 0

    def render(self, tokens: Iterable[Token]) -> None:
        for token in tokens:
            handler = self._handlers.get(token.type)
            if handler is not None:
                handler(self, token)

    def _heading_open(self, token: Token) -> None:
        self._heading_level = int(token.tag[1])

    def _heading_close(self, _token: Token) -> None:
        self._heading_level = None

    def _list_open(self, _token: Token) -> None:
        if self._list_depth == 0:
            self._builder.end_line_run()
        self._list_depth += 1

    def _list_close(self, _token: Token) -> None:
        self._list_depth -= 1
        if self._list_depth == 0:
            self._builder.end_line_run()

    def _list_item_open(self, token: Token) -> None:
        self._pending_marker = f"{token.info}{token.markup}" if token.info else "-"

    def _inline(self, token: Token) -> None:
        text = _inline_markdown_text(token)
        if self._heading_level is not None:
            self._builder.heading(self._heading_level, text)
        elif self._table_cells is not None:
            self._table_cells.append(_collapse_whitespace(text))
        elif self._list_depth:
            self._builder.line(self._list_prefix() + _collapse_whitespace(text))
        else:
            self._builder.block(text)

    def _code(self, token: Token) -> None:
        code = token.content.rstrip("\n")
        if self._list_depth:
            indent = self._list_prefix()
            self._builder.line("\n".join(indent + line for line in code.split("\n")))
        else:
            self._builder.block(code)

    def _html_block(self, token: Token) -> None:
        if (deepest := _nesting(token.content)) > MAX_HTML_NESTING:
            msg = f"An HTML block nests elements {deepest:,} deep; at most {MAX_HTML_NESTING:,} can be read."
            raise InvalidInputError(msg)
        fragment = LexborHTMLParser(token.content)
        for node in _outermost(fragment.css(_NEVER_CONTENT)):
            node.decompose()
        self._builder.block(_flatten_text(fragment.body) if fragment.body is not None else "")

    def _table_open(self, _token: Token) -> None:
        self._builder.end_line_run()

    def _row_open(self, _token: Token) -> None:
        self._table_cells = []

    def _row_close(self, _token: Token) -> None:
        if self._table_cells is not None and any(self._table_cells):
            self._builder.line(" | ".join(self._table_cells))
            self._row_width = len(self._table_cells)
        self._table_cells = None

    def _header_close(self, _token: Token) -> None:
        # The header's separator stays, so a reader of the text can tell the header from a row and quote a row
        # as "header: cell; …" (the offline responder does); without it a header row reads as data.
        if self._row_width:
            self._builder.line(_table_separator(self._row_width))

    def _list_prefix(self) -> str:
        indent = "  " * (self._list_depth - 1)
        marker, self._pending_marker = self._pending_marker, None
        return f"{indent}{marker} " if marker else f"{indent}  "

    _handlers: Final[dict[str, Callable[["_MarkdownRenderer", Token], None]]] = {
        "heading_open": _heading_open,
        "heading_close": _heading_close,
        "bullet_list_open": _list_open,
        "ordered_list_open": _list_open,
        "bullet_list_close": _list_close,
        "ordered_list_close": _list_close,
        "list_item_open": _list_item_open,
        "inline": _inline,
        "fence": _code,
        "code_block": _code,
        "html_block": _html_block,
        "table_open": _table_open,
        "table_close": _table_open,
        "tr_open": _row_open,
        "tr_close": _row_close,
        "thead_close": _header_close,
    }


# --- HTML ------------------------------------------------------------------------------------------------

_HEADING_TAGS: Final = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_NEVER_CONTENT = (
    "script, style, noscript, template, svg, canvas, iframe, object, embed, button, select, input, textarea"
)
_BOILERPLATE = (
    "nav, aside, footer, form, dialog, [role=navigation], [role=banner], [role=contentinfo], [role=search], "
    "[role=complementary], [role=dialog], [role=alertdialog], [role=menu]"
)
_HIDDEN = "[aria-hidden=true], [hidden]"
# Hyphen/underscore-separated parts of class and id names that mark page furniture rather than content.
_BOILERPLATE_NAME_PARTS: Final = frozenset({
    "cookie", "cookies", "consent", "gdpr", "newsletter", "subscribe", "breadcrumb", "breadcrumbs", "sidebar",
    "social", "advert", "advertisement", "ads", "promo", "skip", "related", "comments",
    "toc", "pagination", "pager", "feedback", "votes", "sronly", "sr", "visually", "popup", "modal",
    "footer", "nav", "navbar", "navigation", "menu", "masthead",
})  # fmt: skip
# Share buttons are links and icons; a block so named that holds a paragraph of prose is content ("To share the
# installer with your team, send them the link ..." was dropped).
_SHARING_NAME_PARTS: Final = frozenset({"share", "sharing"})
_PROSE_WORDS = 6
# Parts of the names of what a reader opens in place: tab panels, accordion answers. Hidden until opened, they are
# content, unlike a hidden menu, modal or cookie banner (whose names are boilerplate ones).
_PANEL_NAME_PARTS: Final = frozenset({
    "panel", "tabpanel", "pane", "tab", "tabs", "accordion", "collapse", "collapsible", "expandable", "answer", "faq",
})  # fmt: skip
_NAME_PART_SEPARATOR = re.compile(r"[-_\s]+")
# Headings of page furniture that help centers (Zendesk and the like) put inside the article: the section under one
# was a chunk of links, comments or vote buttons, quoted to customers. Compared casefolded, without punctuation or
# numbers ("3 Comments", "Was this article helpful?"); English, Spanish, German and French, as help centers print them.
_BOILERPLATE_HEADINGS: Final = frozenset({
    "related articles", "related posts", "related pages", "related topics", "recently viewed articles",
    "recently viewed", "articles in this section", "in this section", "comments", "comment", "leave a comment",
    "add a comment", "post a comment", "was this article helpful", "was this page helpful", "was this helpful",
    "share this article", "share this page", "share", "follow", "follow us", "table of contents", "on this page",
    "in this article",
    "artículos relacionados", "artículos vistos recientemente", "comentarios", "fue útil este artículo",
    "ähnliche beiträge", "verwandte artikel", "zuletzt angesehene beiträge", "kommentare",
    "war dieser beitrag hilfreich", "articles associés", "articles connexes", "articles récemment consultés",
    "commentaires", "cet article vous a t il été utile",
})  # fmt: skip
_NOT_HEADING_WORD = re.compile(r"[^\w\s]|\d|_")
# A block whose text is at least this share of link text is a list of links (related articles, a menu).
_LINK_LIST_SHARE = 0.5
_BLOCK_TAGS: Final = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup", "hr", "html", "li",
    "main", "nav", "p", "pre", "section", "summary", "tbody", "td", "tfoot", "th", "thead", "tr",
})  # fmt: skip


# HTML parsing checks the stack of open elements for every tag, so its time grows with the square of the nesting:
# 60,000 unclosed <div>s took 5 s and 200,000 two minutes, in a worker thread that a customer's attachment could
# hold for hours. Real pages nest tens deep; old ones with unclosed <font> tags, a few thousand.
MAX_HTML_NESTING: Final = 5_000
_TAG_START = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)")
# Elements that are never open afterwards: void ones, and those whose end tag the parser implies.
_NOT_NESTING: Final = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
    "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody", "tfoot", "colgroup",
    "caption", "rb", "rt", "rtc", "rp", "html", "head", "body",
})  # fmt: skip


def _nesting(text: str) -> int:
    """How deep the tags of ``text`` nest at most, counting start and end tags (an upper bound on the DOM's)."""
    depth = deepest = 0
    for closing, name in _TAG_START.findall(text):
        if name.lower() in _NOT_NESTING:
            continue
        if closing:
            depth = max(0, depth - 1)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def _extract_html(text: str) -> ExtractedDocument:
    if (deepest := _nesting(text)) > MAX_HTML_NESTING:
        msg = (
            f"The HTML nests elements {deepest:,} deep (unclosed tags); at most {MAX_HTML_NESTING:,} can be read. "
            "Close its tags, or send it as text."
        )
        raise InvalidInputError(msg)
    tree = LexborHTMLParser(text)
    title_element = tree.css_first("title")
    page_title = _collapse_whitespace(title_element.text()) if title_element is not None else ""
    _keep_accordion_questions(tree)
    for node in _outermost(tree.css(_NEVER_CONTENT)):
        node.decompose()
    root = _content_root(tree)
    if root is None:
        return ExtractedDocument(title=page_title or None, sections=())
    _remove_boilerplate(root)
    first_h1 = root.css_first("h1")
    h1_title = _flatten_text(first_h1) if first_h1 is not None else ""
    builder = _SectionBuilder(h1_title or page_title or None)
    walker = _HtmlWalker(builder)
    walker.walk(root)
    walker.flush()
    return builder.finish()


def _content_root(tree: LexborHTMLParser) -> LexborNode | None:
    """The element holding the page's own content: <main>, else a lone <article>, else <body>."""
    main = tree.css_first("main, [role=main]")
    if main is not None:
        return main
    articles = tree.css("article")
    if len(articles) == 1:
        return articles[0]
    return tree.body


def _keep_accordion_questions(tree: LexborHTMLParser) -> None:
    """An accordion's question is the button that opens its answer: keep its text, as buttons are dropped."""
    buttons = [
        button
        for button in tree.css("button[aria-controls][aria-expanded]")
        if button.attributes.get("role") != "tab"  # a tab's label: its panel has a heading of its own, as a rule
    ]
    if not buttons or tree.body is None:
        return
    by_id = {node.attributes.get("id"): node for node in tree.css("[id]")}
    subtrees = _Subtrees(tree.body)
    for button in buttons:
        controlled = (button.attributes.get("aria-controls") or "").split()
        panel = by_id.get(controlled[0]) if controlled else None
        if panel is not None and _is_panel(panel, subtrees):
            button.unwrap()


def _remove_boilerplate(root: LexborNode) -> None:
    subtrees = _Subtrees(root)
    candidates = [node for node in root.css(_BOILERPLATE) if node.tag != "form" or not _has_headings(node)]
    # Hidden until a reader opens them, tab panels and accordion answers are content.
    candidates += [node for node in root.css(_HIDDEN) if not _is_panel(node, subtrees)]
    # A <header> inside an <article> or a <section> is its heading block, not the site banner.
    candidates += [node for node in root.css("header") if not _has_ancestor(node, {"article", "section"}, root)]
    # Class names are a weaker signal: a wrapper with a misleading name may hold a section of the content. A heading
    # is never dropped for its name alone: the text under it would join the section before (_HtmlWalker judges it).
    candidates += [
        node
        for node in root.css("[class], [id]")
        if node.tag not in _HEADING_TAGS and _has_boilerplate_name(node) and _is_furniture(node, subtrees)
    ]
    # Never drop the root, nor the content's own title.
    droppable = [node for node in candidates if node.mem_id != root.mem_id and not _has_descendant(node, "h1")]
    for node in _outermost(droppable):
        node.decompose()


def _is_furniture(node: LexborNode, subtrees: "_Subtrees") -> bool:
    """Whether a block named like boilerplate is some.

    It is when it has no headings, only boilerplate ones ("Related articles"), or mostly links; a block that holds
    the article, or a section of it ("Menus" in a ``menu-editor`` wrapper), is not.
    """
    inside = subtrees.of(node)
    if inside.articles:
        return False
    return not inside.major_headings or not inside.content_headings or subtrees.is_link_list(node)


def _has_boilerplate_name(node: LexborNode) -> bool:
    parts = _name_parts(node)
    if not _BOILERPLATE_NAME_PARTS.isdisjoint(parts):
        return True
    return not _SHARING_NAME_PARTS.isdisjoint(parts) and not any(
        _unlinked_words(paragraph) >= _PROSE_WORDS for paragraph in node.css("p")
    )


def _name_parts(node: LexborNode) -> set[str]:
    names = f"{node.attributes.get('class') or ''} {node.attributes.get('id') or ''}".lower()
    return set(_NAME_PART_SEPARATOR.split(names))


def _is_panel(node: LexborNode, subtrees: "_Subtrees") -> bool:
    """A tab panel, an accordion's answer or a ``<details>``: content a reader opens in place, not a menu or a modal."""
    parts = _name_parts(node)
    is_panel = (
        node.attributes.get("role") == "tabpanel" or node.tag == "details" or not _PANEL_NAME_PARTS.isdisjoint(parts)
    )
    return is_panel and _BOILERPLATE_NAME_PARTS.isdisjoint(parts) and not subtrees.is_link_list(node)


@dataclass(slots=True)
class _Tally:
    """What an element holds, counted as the walk leaves it: characters of text and of link text, elements."""

    node: LexborNode
    children: Iterator[LexborNode]
    text: int = 0
    linked: int = 0
    articles: int = 0  # <article> and <main> elements
    major_headings: int = 0  # h1 to h3
    content_headings: int = 0  # headings that are not boilerplate ones ("Related articles")

    def add(self, other: "_Tally") -> None:
        self.text += other.text
        self.linked += other.linked
        self.articles += other.articles
        self.major_headings += other.major_headings
        self.content_headings += other.content_headings


class _Subtrees:
    """What each element under a root holds (its text, link text, articles and headings), counted in one walk.

    Asked of every candidate for removal, element by element it took time in the square of the nesting.
    """

    def __init__(self, root: LexborNode) -> None:
        self._tallies: dict[int, _Tally] = {}
        stack = [_Tally(root, root.iter(include_text=True))]
        while stack:
            tally = stack[-1]
            child = next(tally.children, None)
            if child is None:
                stack.pop()
                self._tallies[tally.node.mem_id] = tally
                if stack:
                    stack[-1].add(tally)
                    tag = tally.node.tag
                    stack[-1].linked += tally.text - tally.linked if tag == "a" else 0
                    stack[-1].articles += tag in {"article", "main"}
                    stack[-1].major_headings += tag in {"h1", "h2", "h3"}
                    stack[-1].content_headings += tag in _HEADING_TAGS and not _is_boilerplate_heading(
                        _flatten_text(tally.node)
                    )
            elif child.is_text_node:
                tally.text += sum(not character.isspace() for character in child.text_content or "")
            elif child.is_element_node:
                stack.append(_Tally(child, child.iter(include_text=True)))

    def of(self, node: LexborNode) -> _Tally:
        """What the element holds, itself not counted as an article or a heading."""
        return self._tallies.get(node.mem_id) or _Tally(node, iter(()))

    def is_link_list(self, node: LexborNode) -> bool:
        """Whether most of the element's text is link text (a menu, a list of related articles)."""
        tally = self.of(node)
        linked = tally.text if node.tag == "a" else tally.linked
        return tally.text > 0 and linked >= _LINK_LIST_SHARE * tally.text


def _unlinked_words(node: LexborNode) -> int:
    """How many words of the element's text are outside links."""
    return len(node.text(separator=" ").split()) - sum(len(link.text(separator=" ").split()) for link in node.css("a"))


def _is_boilerplate_heading(text: str) -> bool:
    """Whether a heading names page furniture ("Related articles", "3 Comments", "Was this article helpful?")."""
    return " ".join(_NOT_HEADING_WORD.sub(" ", text.casefold()).split()) in _BOILERPLATE_HEADINGS


def _has_headings(node: LexborNode) -> bool:
    # E.g. old ASP.NET pages wrap the whole body in one <form>: a form with headings is content.
    return _has_descendant(node, "h1, h2, h3")


def _has_descendant(node: LexborNode, selector: str) -> bool:
    # Lexbor's css() also matches the node itself.
    return any(match.mem_id != node.mem_id for match in node.css(selector))


def _has_ancestor(node: LexborNode, tags: set[str], stop: LexborNode) -> bool:
    parent = node.parent
    while parent is not None and parent.mem_id != stop.mem_id:
        if parent.tag in tags:
            return True
        parent = parent.parent
    return stop.tag in tags


def _outermost(nodes: Iterable[LexborNode]) -> list[LexborNode]:
    """Drop nodes nested in other listed nodes, so each subtree is removed once (decomposing twice crashes)."""
    listed = {node.mem_id: node for node in nodes}
    outermost = []
    for node in listed.values():
        parent = node.parent
        while parent is not None and parent.mem_id not in listed:
            parent = parent.parent
        if parent is None:
            outermost.append(node)
    return outermost


def _flatten_text(node: LexborNode) -> str:
    """The text of an element on one line."""
    return " ".join(text for text, _ in _flatten_runs(node))


def _flatten_runs(
    node: LexborNode, nested_lists: list[LexborNode] | None = None, *, keep_code: bool = False
) -> list[tuple[str, bool]]:
    """The text of an element as runs of ``(text, is_code)``: text on one line, and each ``<pre>`` with ``keep_code``.

    Kept apart, a code block keeps its lines (a config file in a list item read as one line, glued to the words
    before it). Nested lists are set aside in ``nested_lists`` when given.

    Iterative, like every walk here: old pages nest unclosed ``<font>`` tags thousands deep, past Python's
    recursion limit (a RecursionError was a 500, and failed a whole bulk job).
    """
    runs: list[tuple[str, bool]] = []
    parts: list[str] = []

    def end_text() -> None:
        if text := _collapse_whitespace("".join(parts)):
            runs.append((text, False))
        parts.clear()

    # Each frame: the children still to visit, and what to append once they are done.
    stack: list[tuple[Iterator[LexborNode], str]] = [(node.iter(include_text=True), "")]
    while stack:
        children, closing = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            parts.append(closing)
        elif child.is_text_node:
            parts.append(child.text_content or "")
        elif nested_lists is not None and child.tag in {"ul", "ol"}:
            nested_lists.append(child)
        elif keep_code and child.tag == "pre":
            end_text()
            if code := child.text(deep=True).strip("\n").rstrip():
                runs.append((code, True))
        elif child.tag in _BLOCK_TAGS or child.tag == "br":
            parts.append(" ")
            stack.append((child.iter(include_text=True), " "))
        elif child.is_element_node:
            stack.append((child.iter(include_text=True), ""))
    end_text()
    return runs


class _HtmlWalker:
    """Walks the DOM in document order, turning block elements into paragraphs and headings into sections."""

    def __init__(self, builder: _SectionBuilder) -> None:
        self._builder = builder
        self._inline: list[str] = []
        # The level of a boilerplate heading ("Related articles") whose section is being skipped, up to the next
        # heading of that level or above.
        self._skipping: int | None = None

    def walk(self, element: LexborNode) -> None:
        # Each frame: the children still to visit, and whether the element is a block (flushed when done).
        stack: list[tuple[Iterator[LexborNode], bool]] = [(element.iter(include_text=True), False)]
        while stack:
            children, block = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                if block:
                    self.flush()
                continue
            tag = child.tag
            if tag in _HEADING_TAGS:
                self.flush()
                self._heading(int(tag[1]), _flatten_text(child))
            elif self._skipping is not None:
                if child.is_element_node:  # looking for the heading that ends the skipped section
                    stack.append((child.iter(include_text=True), False))
            elif child.is_text_node:
                self._inline.append(_collapse_inline(child.text_content or ""))
            elif child.is_element_node and (frame := self._element(child)) is not None:
                stack.append(frame)

    def _element(self, element: LexborNode) -> tuple[Iterator[LexborNode], bool] | None:
        """Read an element other than a heading; the frame to walk its children in, if they are to be walked."""
        tag = element.tag
        if tag == "br":
            self._inline.append("\n")
        elif tag in {"ul", "ol"}:
            self.flush()
            self._lines(_list_lines(element))
        elif tag == "table" and not _has_descendant(element, "table, h1, h2, h3, h4, h5, h6"):
            self.flush()
            self._lines(_table_lines(element))
        elif tag == "pre":
            self.flush()
            self._builder.block(element.text(deep=True))
        elif tag in _BLOCK_TAGS or tag == "table":  # a table holding headings is page layout
            self.flush()
            return element.iter(include_text=True), True
        else:
            return element.iter(include_text=True), False
        return None

    def _heading(self, level: int, text: str) -> None:
        if self._skipping is not None and level > self._skipping:
            return  # a subsection of a skipped section
        if _is_boilerplate_heading(text) and text != self._builder.title:
            self._skipping = level
            return
        self._skipping = None
        self._builder.heading(level, text)

    def flush(self) -> None:
        lines = (line.strip() for line in "".join(self._inline).split("\n"))
        self._builder.block("\n".join(line for line in lines if line))
        self._inline = []

    def _lines(self, lines: list[str]) -> None:
        self._builder.end_line_run()
        for line in lines:
            self._builder.line(line)
        self._builder.end_line_run()


def _collapse_inline(text: str) -> str:
    # Source newlines and indentation are not visible in rendered HTML; keep one space where there was any.
    return re.sub(r"\s+", " ", text)


@dataclass(slots=True)
class _ListFrame:
    """A list being turned into lines: its items still to read, and the nested lists of the item just read."""

    items: Iterator[LexborNode]
    depth: int
    ordered: bool
    number: int
    nested: list[LexborNode] = field(default_factory=list)

    @classmethod
    def of(cls, list_element: LexborNode, depth: int) -> "_ListFrame":
        start = list_element.attributes.get("start") or "1"
        number = int(start) if start.strip().lstrip("-").isdigit() else 1
        items = (item for item in list_element.iter() if item.tag == "li")
        return cls(items, depth, list_element.tag == "ol", number)


def _list_lines(root: LexborNode) -> list[str]:
    """A list's items as lines, each item's nested lists indented under it (depth first, without recursion)."""
    lines: list[str] = []
    stack = [_ListFrame.of(root, 0)]
    while stack:
        frame = stack[-1]
        if frame.nested:
            stack.append(_ListFrame.of(frame.nested.pop(0), frame.depth + 1))
            continue
        item = next(frame.items, None)
        if item is None:
            stack.pop()
            continue
        marker = f"{frame.number}." if frame.ordered else "-"
        frame.number += 1
        # The item's first line carries the marker; what follows a code block, and the code's lines, go under it.
        prefix, under = f"{'  ' * frame.depth}{marker} ", " " * (2 * frame.depth + len(marker) + 1)
        for text, is_code in _flatten_runs(item, nested_lists=frame.nested, keep_code=True):
            if is_code:
                lines.append(
                    "\n".join((prefix if index == 0 else under) + line for index, line in enumerate(text.split("\n")))
                )
            else:
                lines.append(prefix + text)
            prefix = under
    return lines


def _table_separator(columns: int) -> str:
    """The Markdown line under a table's header row, in the ``a | b`` form tables are extracted to."""
    return " | ".join(["---"] * columns)


def _table_lines(table: LexborNode) -> list[str]:
    lines = []
    caption = table.css_first("caption")
    if caption is not None and (caption_text := _flatten_text(caption)):
        lines.append(caption_text)
    rows = 0
    for row in table.css("tr"):
        cells = [cell for cell in row.iter() if cell.tag in {"td", "th"}]
        texts = [_flatten_text(cell) for cell in cells]
        if not any(texts):
            continue
        lines.append(" | ".join(texts))
        rows += 1
        if rows == 1 and all(cell.tag == "th" for cell in cells):
            lines.append(_table_separator(len(cells)))  # a header row, marked as Markdown marks one
    return lines


# --- PDF -------------------------------------------------------------------------------------------------

# The header may follow some junk bytes and the EOF marker some trailing ones; readers look this far.
_PDF_HEADER_WINDOW: Final = 1024


def _extract_pdf(data: bytes) -> ExtractedDocument:
    if not data.strip():
        msg = "The PDF is empty."
        raise InvalidInputError(msg)
    if b"%PDF-" not in data[:_PDF_HEADER_WINDOW]:
        msg = "The file is not a PDF: it has no %PDF header."
        raise InvalidInputError(msg)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            # An owner password alone only restricts editing and opens with the empty user password.
            msg = "The PDF is protected by a password; upload an unprotected copy."
            raise InvalidInputError(msg)
        pages = [page.extract_text() or "" for page in reader.pages]
        title = _pdf_title(reader)
    except InvalidInputError:
        raise
    except pypdf.errors.DependencyError as error:
        msg = f"The PDF is encrypted in a way this server cannot open ({error}); upload an unprotected copy."
        raise InvalidInputError(msg) from error
    except Exception as error:  # pypdf raises many kinds (PdfReadError, ValueError, KeyError...) on bad input
        detail = str(error) or type(error).__name__
        if b"%%EOF" not in data[-_PDF_HEADER_WINDOW:]:
            # pypdf only logs this; it is the likeliest cause (a truncated upload) and worth naming.
            detail += " (EOF marker not found: the file looks truncated)"
        msg = f"The PDF could not be read: {detail}"
        raise InvalidInputError(msg) from error
    if not pages:
        msg = "The PDF has no pages."
        raise InvalidInputError(msg)
    body = normalise_text("\n\n".join(pages))
    if not body:
        msg = "The PDF has no text layer (it may be a scan); upload a PDF with selectable text, or its text."
        raise InvalidInputError(msg)
    return ExtractedDocument(title=title, sections=(Section((), body),))


def _pdf_title(reader: pypdf.PdfReader) -> str | None:
    metadata = reader.metadata
    title = metadata.title if metadata is not None else None
    return (_collapse_whitespace(str(title)) or None) if title else None
