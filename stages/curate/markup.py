"""Markdown / reStructuredText to plain prose: the "extraction" step of the local documentation source.

Package READMEs and docs are the local analogue of web pages: the text a reader sees is wrapped
in markup (badges, code blocks, tables, link syntax, heading underlines) that the web filters
would otherwise count as symbols and junk lines. Trafilatura does this job for HTML; this module
does it for the two markup languages Python packages ship. It is line-based and deliberately
conservative: it drops blocks that are not prose (code, tables, directives, badges) and unwraps
inline markup, and it never rewrites the words themselves.
"""

from __future__ import annotations

import re

_MAX_INLINE_LINE = 5000

# -- inline markup (shared) ---------------------------------------------------------------------
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)|!\[[^\]]*\]\[[^\]]*\]")
_MD_LINK = re.compile(r"\[([^\]]*)\]\((?:[^)(]|\([^)]*\))*\)|\[([^\]]+)\]\[[^\]]*\]")
_MD_LINK_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*\S+")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>|<!--.*?-->")
# emphasis: * anywhere, _ only at word boundaries (CommonMark: snake_case is not emphasis)
_MD_EMPH = re.compile(r"(\*\*|\*)(?=\S)(.+?)(?<=\S)\1|(?<!\w)(__|_)(?=\S)(.+?)(?<=\S)\3(?!\w)")
_INLINE_CODE = re.compile(r"``?([^`]+)``?")
_RST_ROLE = re.compile(r":[\w:+.-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`__?")
_RST_REF = re.compile(r"`([^`]+)`_{1,2}")
_RST_SHORT_REF = re.compile(r"(?<=\w)_(?=[\s.,;:!?)]|$)")
_RST_SUBST = re.compile(r"\|[\w .:-]+\|_{0,2}")
_BARE_URL_LINE = re.compile(r"^\s*(?:https?://|www\.)\S+\s*$")

# -- block markup --------------------------------------------------------------------------------
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
_MD_BULLET = re.compile(r"^(\s*)[*+]\s+")
_MD_HRULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_TABLE_ROW = re.compile(r"^\s*(\|.*\||\+[-=+]+\+)\s*$")
_ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+<>:._])\1{2,}\s*$")
_SIMPLE_TABLE_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::")
_RST_COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
# directives whose body is prose a reader sees
_PROSE_DIRECTIVES = {"note", "warning", "tip", "important", "hint", "caution", "attention",
                     "danger", "error", "admonition", "seealso", "versionadded", "versionchanged",
                     "deprecated", "topic", "sidebar", "rubric"}


def detect_format(name: str = "", content_type: str | None = None, text: str = "") -> str:
    """'markdown', 'rst' or 'plain', from a METADATA content type, a file name, or the text."""
    ct = (content_type or "").lower()
    name = name.lower()
    if "markdown" in ct or name.endswith((".md", ".markdown")):
        return "markdown"
    if "rst" in ct or name.endswith((".rst", ".rest")):
        return "rst"
    if "text/plain" in ct or name.endswith(".txt"):
        return "plain"
    # METADATA without a content type is reStructuredText by the core metadata spec's default,
    # but many of those bodies are plain text; markers decide.
    if re.search(r"^\s{0,3}(```|#{1,6}\s)", text, re.M):
        return "markdown"
    if re.search(r"^\.\.\s+[\w-]+::|^([=\-~^])\1{3,}\s*$", text, re.M):
        return "rst"
    return "plain"


def to_plain_text(text: str, fmt: str) -> str:
    """Strip ``fmt`` markup from ``text``; plain text only gets its whitespace normalised."""
    if fmt == "markdown":
        lines = _markdown_blocks(text.splitlines())
    elif fmt == "rst":
        lines = _rst_blocks(text.splitlines())
    else:
        lines = text.splitlines()
    out = []
    for line in lines:
        line = _unwrap_inline(line, fmt).rstrip()
        if _BARE_URL_LINE.match(line):
            continue
        out.append(line)
    return _squeeze_blank_lines(out)


def _markdown_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    in_fence: str | None = None
    prev_blank = True
    for line in lines:
        fence = _FENCE.match(line)
        if in_fence:
            if fence and fence.group(1) == in_fence:
                in_fence = None
            continue
        if fence:
            in_fence = fence.group(1)
            continue
        blank = not line.strip()
        # indented code block: 4+ spaces after a blank line, or continuing one
        if not blank and (line.startswith("    ") or line.startswith("\t")) and (prev_blank or _last_was_code(out)):
            out.append("\0code")
            prev_blank = False
            continue
        if _MD_LINK_DEF.match(line) or _TABLE_ROW.match(line) or _MD_HRULE.match(line) \
                or _ADORNMENT.match(line) or _looks_like_table(line):
            prev_blank = blank
            continue
        line = _MD_HEADING.sub("", line)
        line = re.sub(r"^\s{0,3}>\s?", "", line)  # blockquote marker
        line = _MD_BULLET.sub(r"\1- ", line)  # one bullet glyph, as HTML extractors emit
        out.append(line)
        prev_blank = blank
    return [ln for ln in out if ln != "\0code"]


def _rst_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    skip_indent: int | None = None  # skipping an indented block deeper than this
    literal_next = False
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if literal_next and stripped:
            # the block after "::" is a literal (code) block: skip while it is indented
            literal_next = False
            if indent > _last_indent(out):
                skip_indent = _last_indent(out)
                continue
        directive = _RST_DIRECTIVE.match(line)
        if directive:
            if directive.group(2).lower() not in _PROSE_DIRECTIVES:
                skip_indent = len(directive.group(1))
            else:
                rest = line[directive.end():].strip()
                if rest:
                    out.append(" " * len(directive.group(1)) + rest)
            continue
        if _RST_COMMENT.match(line):
            skip_indent = indent
            continue
        if _ADORNMENT.match(line) or _TABLE_ROW.match(line) or _SIMPLE_TABLE_RULE.match(line) \
                or _looks_like_table(line):
            continue
        if stripped.endswith("::"):
            literal_next = True
            line = line.rstrip()[:-2].rstrip()
            if line.strip():
                line += ":"
            else:
                continue
        out.append(line)
    return out


def _unwrap_inline(line: str, fmt: str) -> str:
    if len(line) > _MAX_INLINE_LINE:  # not prose; and keeps the lazy patterns linear in practice
        return line
    if fmt == "markdown":
        line = _HTML_TAG.sub("", line)
        line = _MD_IMAGE.sub("", line)
        line = _MD_LINK.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), line)
        line = _INLINE_CODE.sub(r"\1", line)
        line = _MD_EMPH.sub(_emphasis_text, line)
    elif fmt == "rst":
        line = _RST_SUBST.sub("", line)
        line = _RST_ROLE.sub(r"\1", line)
        line = _RST_LINK.sub(r"\1", line)
        line = _INLINE_CODE.sub(r"\1", line)
        line = _RST_REF.sub(r"\1", line)
        line = _RST_SHORT_REF.sub("", line)
        line = _MD_EMPH.sub(_emphasis_text, line)
    return line.replace("&nbsp;", " ").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")


def _emphasis_text(m: re.Match) -> str:
    return m.group(2) if m.group(2) is not None else m.group(4)


def _looks_like_table(line: str) -> bool:
    # markdown pipe tables without outer pipes: "a | b | c" with a separator row like "---|---"
    s = line.strip()
    return s.count("|") >= 2 and (set(s) <= set("|-: ") or s.count("|") >= 3)


def _last_was_code(out: list[str]) -> bool:
    return bool(out) and out[-1] == "\0code"


def _last_indent(out: list[str]) -> int:
    for line in reversed(out):
        if line.strip():
            return len(line) - len(line.lstrip())
    return 0


def _squeeze_blank_lines(lines: list[str]) -> str:
    out: list[str] = []
    blank = 0
    for line in lines:
        if line.strip():
            blank = 0
            out.append(line)
        else:
            blank += 1
            if blank == 1 and out:
                out.append("")
    return "\n".join(out).strip()
