"""Markdown, reStructuredText, GNU Info, man pages (roff) and hard-wrapped text to plain prose: the
"extraction" step of the local documentation source.

Package READMEs and docs are the local analogue of web pages: the text a reader sees is wrapped
in markup (badges, code blocks, tables, link syntax, heading underlines) that the web filters
would otherwise count as symbols and junk lines. Trafilatura does this job for HTML; this module
does it for the markup languages installed software ships. It is line-based and deliberately
conservative: it drops blocks that are not prose (code, tables, directives, badges, Info node
headers and menus) and unwraps inline markup, and it never rewrites the words themselves.

Last, it joins hard-wrapped paragraphs into one line each (``reflow``). Text files are wrapped at
~72-79 columns by their authors, and Markdown and reST renderers join a paragraph's lines into one;
trafilatura's output, which the C4 and FineWeb line rules were tuned on, has one paragraph per line.
Left wrapped, a licence or a manual fails "lines ending in punctuation" for the way it was typed.
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
# GNU Info: a node starts after \x1f with a "File: x.info,  Node: ..." line; menus list "* Node::"
_INFO_NODE_HEADER = re.compile(r"^File: \S+,\s+Node: ")
_INFO_MENU = re.compile(r"^\* (Menu:|[^:\n]+::|[^:\n]+:\s+[^.\n]+\.)")
# Info renders Texinfo's code, file, option and sample markup as ‘quotes’ (older makeinfo: `quotes'),
# as Markdown renders `code`: the marks go, the words stay
_INFO_QUOTED = re.compile(r"‘([^‘’\n]{1,200})’|`([^`'\n]{1,200})'|(?<![\w'])'([^'\s][^'\n]{0,100}?)'(?![\w'])")
_INFO_XREF = re.compile(r"\*([Nn])ote\s+([^:]+?)::|\*([Nn])ote\s+([^:]+?):\s*\([^)]*\)[^.,]*[.,]"
                        r"|\*([Nn])ote\s+([^:]+?):\s*[^.,:]+[.,]")
# a line that starts a block of its own (a list item, a reST field) rather than continuing one
_ITEM_START = re.compile(r"^\s*(?:[-*+•]\s+|\d{1,3}(?:\.\d{1,3})*[.)]\s+|\d{1,3}(?:\.\d{1,3})+\s+"
                         r"|\([a-zA-Z0-9]{1,3}\)\s+|:[\w -]+:(\s+|$))")
# columns of a table or a listing: a run of 3+ spaces (two after a full stop is a sentence gap) or a tab
_COLUMN_GAP = re.compile(r"\S( {3,}|\t)\S")
# a man page in a section folder: /usr/share/man/man1/ls.1, .../man3/ssl.3ssl (gzip suffix removed)
_MAN_PAGE_PATH = re.compile(r"(^|/)man/man\d\w*/[^/]+\.\d\w*$")
# directives whose body is prose a reader sees
_PROSE_DIRECTIVES = {"note", "warning", "tip", "important", "hint", "caution", "attention",
                     "danger", "error", "admonition", "seealso", "versionadded", "versionchanged",
                     "deprecated", "topic", "sidebar", "rubric"}


def detect_format(name: str = "", content_type: str | None = None, text: str = "") -> str:
    """'markdown', 'rst', 'html', 'info', 'man' or 'plain', from a METADATA content type, a file
    name, or the text."""
    ct = (content_type or "").lower()
    if _MAN_PAGE_PATH.search(name):
        return "man"
    name = name.lower()
    if "markdown" in ct or name.endswith((".md", ".markdown")):
        return "markdown"
    if "rst" in ct or name.endswith((".rst", ".rest")):
        return "rst"
    if "html" in ct or name.endswith((".html", ".htm")):
        return "html"
    if re.search(r"\.info(-\d+)?$", name):
        return "info"
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
    """Strip ``fmt`` markup from ``text`` and join wrapped paragraphs.

    ``fmt`` is 'markdown', 'rst', 'info', 'man' (a man(7) page's roff source), 'text' (a text file
    as its author typed it, hard-wrapped) or 'plain' (text that is already one paragraph per line,
    such as a WET record: only its blank lines are squeezed).
    """
    if fmt == "man":
        lines = _man_blocks(text)
    elif fmt == "markdown":
        lines = _markdown_blocks(text.splitlines())
    elif fmt == "rst":
        lines = _rst_blocks(text.splitlines())
    elif fmt == "info":
        lines = _info_blocks(text)
    elif fmt == "text":  # a heading's underline or a rule: the heading stands alone
        lines = ["" if _ADORNMENT.match(line) else line for line in text.splitlines()]
    else:
        lines = text.splitlines()
    out = []
    for line in lines:
        line = _unwrap_inline(line, fmt).rstrip()
        if _BARE_URL_LINE.match(line):
            continue
        out.append(line)
    if fmt != "plain":
        out = reflow(out, rendered=fmt in ("markdown", "rst", "man"))
    return _squeeze_blank_lines(out)


def reflow(lines: list[str], rendered: bool) -> list[str]:
    """Join each paragraph's wrapped lines into one line.

    A line continues the paragraph above it when neither is blank, it does not start a list item
    or field, it is indented like the paragraph's text (a list item's text column for its
    continuation lines), and neither line is laid out in columns. In ``rendered`` formats (Markdown,
    reST) that is the whole rule, as their renderers join soft line breaks. Typed text was wrapped
    greedily, so a line was broken there only if the next word did not fit: the line above plus
    the next word must reach the text's usual width. Lists of short entries (names, commit
    subjects, addresses, commands) stay one entry per line.
    """
    lengths = sorted(len(ln.rstrip()) for ln in lines if ln.strip())
    if not lengths:
        return lines
    width = 0.9 * max(40, lengths[int(0.9 * (len(lengths) - 1))])
    out: list[str] = []
    text_col = None  # the column the current paragraph's continuation lines start at
    first_line = False  # the current paragraph has one line so far
    prev = ""        # the current paragraph's last physical line
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if out and text_col is not None and stripped and not _ITEM_START.match(line) \
                and not _COLUMN_GAP.search(stripped) and not _COLUMN_GAP.search(prev.strip()):
            # typed text may indent a paragraph's first line only ("   The manual ...")
            aligned = indent == text_col or (not rendered and first_line and indent < text_col <= 8)
            fits = rendered or len(prev.rstrip()) + 1 + len(stripped.split(None, 1)[0]) >= width
            if aligned and fits:
                out[-1] = out[-1].rstrip() + " " + stripped
                prev, text_col, first_line = line, indent, False
                continue
        out.append(line)
        prev = line
        first_line = bool(stripped)
        if not stripped:
            text_col = None
        else:
            item = _ITEM_START.match(line)
            text_col = item.end() if item else indent
    return out


def _markdown_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    in_fence: str | None = None
    in_comment = False  # an HTML comment over several lines (metadata blocks, notes to editors)
    prev_blank = True
    for line in lines:
        if in_comment:
            in_comment = "-->" not in line
            continue
        if line.lstrip().startswith("<!--") and "-->" not in line:
            in_comment = True
            out.append("")
            continue
        fence = _FENCE.match(line)
        if in_fence:
            if fence and fence.group(1) == in_fence:
                in_fence = None
            continue
        if fence:
            in_fence = fence.group(1)
            out.append("")  # a dropped block still ends the paragraph before it
            continue
        blank = not line.strip()
        # indented code block: 4+ spaces after a blank line, or continuing one
        if not blank and (line.startswith("    ") or line.startswith("\t")) and (prev_blank or _last_was_code(out)):
            out.append("\0code")
            prev_blank = False
            continue
        if _MD_HRULE.match(line) or _ADORNMENT.match(line):  # a rule or a heading's underline
            out.append("")
            prev_blank = True
            continue
        if _MD_LINK_DEF.match(line) or _TABLE_ROW.match(line) or _looks_like_table(line):
            out.append("")
            prev_blank = blank
            continue
        if _MD_HEADING.match(line):  # a heading is a block of its own
            out += ["", _MD_HEADING.sub("", line), ""]
            prev_blank = True
            continue
        line = re.sub(r"^\s{0,3}>\s?", "", line)  # blockquote marker
        line = _MD_BULLET.sub(r"\1- ", line)  # one bullet glyph, as HTML extractors emit
        out.append(line)
        prev_blank = blank
    return ["" if ln == "\0code" else ln for ln in out]


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
        if _ADORNMENT.match(line):  # a title's over- or underline: the title stands alone
            out.append("")
            continue
        if _TABLE_ROW.match(line) or _SIMPLE_TABLE_RULE.match(line) or _looks_like_table(line):
            out.append("")
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


def _info_blocks(text: str) -> list[str]:
    """GNU Info's rendered Texinfo without its navigation: node headers, menus, the tag table."""
    out: list[str] = []
    for node in text.split("\x1f"):
        body = node.lstrip("\n")
        if body.startswith(("Tag Table:", "Indirect:", "End Tag Table", "Local Variables")):
            continue
        in_dir_entry = False
        for line in body.splitlines():
            # the "dir" index entry the installer adds to the top-level Info menu
            if line.startswith(("START-INFO-DIR-ENTRY", "END-INFO-DIR-ENTRY")):
                in_dir_entry = line.startswith("START")
                continue
            if in_dir_entry or line.startswith("INFO-DIR-SECTION"):
                continue
            if _INFO_NODE_HEADER.match(line) or _INFO_MENU.match(line):
                continue
            if _ADORNMENT.match(line):  # a heading's underline: the heading stands alone
                out.append("")
                continue
            line = _INFO_XREF.sub(_info_xref_text, line)
            out.append(_INFO_QUOTED.sub(lambda m: next(g for g in m.groups() if g is not None), line))
        out.append("")
    return out


# -- man pages: roff source as `man` lays it out -----------------------------------------------------
# requests that end a paragraph; any other request is layout (spacing, fonts, registers) and goes
_MAN_BREAKS = {"SH", "SS", "PP", "P", "LP", "TP", "TQ", "IP", "HP", "RS", "RE", "sp", "br", "bp", "ti", "in"}
_MAN_FONT_JOINED = {"BR", "RB", "IR", "RI", "BI", "IB"}  # alternating fonts: arguments run together
_MAN_FONT_SPACED = {"B", "I", "SM", "SB"}
_MAN_SKIP_BLOCKS = {"nf": "fi", "EX": "EE", "TS": "TE", "EQ": "EN", "de": "..", "ig": ".."}  # code, tables
_ROFF_ARGS = re.compile(r'"((?:[^"]|"")*)"|(\S+)')
_ROFF_GLYPHS = {
    "em": "—", "en": "–", "bu": "•", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
    "co": "©", "rg": "®", "tm": "™", "hy": "-", "mi": "-", "pl": "+", "mu": "×", "di": "÷", "ti": "~",
    "ha": "^", "rs": "\\", "at": "@", "sh": "#", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨",
    "ra": "⟩", ">=": "≥", "<=": "≤", "!=": "≠", "->": "→", "<-": "←", "de": "°", "ga": "`", "aa": "´",
    "sc": "§", "dg": "†", "Aq": "'", "R": "®", "Tm": "™", "Lq": "“", "Rq": "”", "bv": "|", "ba": "|",
    "or": "|", "fo": "«", "fc": "»", "Fo": "«", "Fc": "»", "ss": "ß", "'e": "é", "`e": "è", ":u": "ü",
    ":o": "ö", ":a": "ä",
}
# escapes, in one alternation so each is read once, left to right
_ROFF_ESCAPE = re.compile(
    r'(?P<comment>\\"[^\n]*)'
    r"|\\(?:\((?P<glyph2>[^\n]{2})|\[(?P<glyph>[^\]\n]*)\])"                       # \(em \[aq]
    r"|\\\*(?:\((?P<string2>[^\n]{2})|\[(?P<string>[^\]\n]*)\]|(?P<string1>.))"  # \*(lq \*[R] \*R
    r"|(?P<layout>\\[fFmgkn][+-]?(?:\([^\n]{2}|\[[^\]\n]*\]|.)"                 # fonts, colours, registers
    r"|\\s(?:[+-]?\(?\d{1,2}|\[[^\]\n]*\]|'[^'\n]*')"                          # sizes
    r"|\\[hvwlLoXZDNbRxYV]'[^'\n]*')"                                           # motions, widths, devices
    r"|\\(?P<char>.)"
)
_ROFF_CHAR = {"-": "-", "e": "\\", "\\": "\\", ".": ".", " ": " ", "~": " ", "0": " ", "'": "´", "`": "`",
              "t": "\t"}


def _roff_escape(m: re.Match) -> str:
    if m.group("char") is not None:
        return _ROFF_CHAR.get(m.group("char"), "")  # \& \| \^ \% \c \{ \}: nothing
    name = next((m.group(g) for g in ("glyph2", "glyph", "string2", "string", "string1") if m.group(g)), None)
    return _ROFF_GLYPHS.get(name, "") if name else ""  # comments and layout: nothing


def _roff_text(line: str) -> str:
    return _ROFF_ESCAPE.sub(_roff_escape, line)


def _roff_args(rest: str) -> list[str]:
    return [m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2)
            for m in _ROFF_ARGS.finditer(rest)]


def _man_blocks(text: str) -> list[str]:
    """A man(7) page as ``man`` shows it, without the layout: section headings as lines of their
    own, paragraphs (filled text lines, which ``reflow`` joins), ``.TP`` tags on their own line,
    bullets as list items. Preformatted blocks (synopses, examples), tables and equations go, as
    code blocks do in Markdown. BSD mdoc pages are macro calls throughout and give nothing."""
    if re.search(r"^\.Dd\b", text, re.M):
        return []
    out: list[str] = []
    end_of_skip: str | None = None
    tag_next = False
    bullet = ""
    for raw in text.splitlines():
        if end_of_skip is not None:
            if raw.lstrip(".'").split(" ", 1)[0].rstrip() == end_of_skip or (
                    end_of_skip == ".." and raw.strip() == ".."):
                end_of_skip = None
            continue
        if raw[:1] not in (".", "'"):
            line = _roff_text(raw).rstrip()
            if not line.strip():
                out.append("")
                continue
            out.append(bullet + line)
            bullet = ""
            if tag_next:  # the tag of a .TP paragraph stands alone
                out.append("")
                tag_next = False
            continue
        name, _, rest = raw[1:].lstrip().partition(" ")
        name = name.rstrip()
        if name in _MAN_SKIP_BLOCKS:
            end_of_skip = _MAN_SKIP_BLOCKS[name]
            out.append("")
        elif name in ("SH", "SS"):
            heading = _roff_text(" ".join(_roff_args(rest))).strip()
            out.extend(["", heading, ""] if heading else [""])
        elif name in _MAN_BREAKS:
            out.append("")
            tag_next = name in ("TP", "TQ")
            if name == "IP":
                tag = _roff_text((_roff_args(rest) or [""])[0]).strip()
                if tag in ("•", "-", "*", "o", "·"):
                    bullet = "• "
                elif tag:
                    out.extend([tag, ""])
        elif name in _MAN_FONT_SPACED or name in _MAN_FONT_JOINED:
            joiner = "" if name in _MAN_FONT_JOINED else " "
            line = _roff_text(joiner.join(_roff_args(rest))).rstrip()
            if line:
                out.append(bullet + line)
                bullet = ""
                if tag_next:
                    out.append("")
                    tag_next = False
    return out


def _info_xref_text(m: re.Match) -> str:
    # "*Note Node::" reads "see Node" in the printed manual ("See" where the sentence starts)
    for i in (1, 3, 5):
        if m.group(i):
            return ("See " if m.group(i) == "N" else "see ") + m.group(i + 1)
    return m.group(0)


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
