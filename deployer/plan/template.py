"""The vhost template, rendered by chevron with `<<` `>>` delimiters, strictly.

Chevron renders an unknown token as empty, HTML-escapes `<<x>>` and silently
drops `<<{x}>>` under custom delimiters. A vhost with a hole or an `&amp;`
in it is a broken site, so the token stream is checked first and every value
tag is turned into an unescaped one before chevron renders it.

The template is tokenized here, not by chevron: chevron's tokenizer copies
the rest of the template at every tag (quadratic: 1 MB took 37.6 s, 2 MB
148.7 s) and yields no line numbers. `tokenize` yields chevron's own token
list in one pass over indices, so chevron renders it exactly as before.
"""

import re

import chevron

from deployer.config import names
from deployer.errors import TemplateError, UsageError

# (kind, key, line): chevron's (tag_type, key) token and the line it starts on.
Token = tuple[str, str, int]

# chevron's tag types by first character; any other starts a value tag's key.
_KINDS = {
    "!": "comment",
    "#": "section",
    "^": "inverted section",
    "/": "end",
    ">": "partial",
    "=": "set delimiter",
    "{": "no escape?",
    "&": "no escape",
}
_SECTION_TAGS = {"section", "inverted section"}
# The rest of a line after a tag is blank up to its newline or the template's end.
# A regex match stops at the first non-blank, so many tags on one long line stay
# linear where slicing to the newline would not.
_BLANK_REST = re.compile(r"[^\S\n]*(\n|\Z)")


def render(template: str, values: dict[str, str], source: str) -> str:
    """Render `template`; `source` names it in errors (a file path)."""
    out = []
    # A broken structure is reported before any tag problem, whatever their order.
    for kind, key, line in tokenize(template, source):
        if kind == "no escape" or kind in _SECTION_TAGS:
            if key not in values:
                try:
                    names.token_name(key)
                except UsageError:
                    # No var can have this name: say so, rather than suggest one.
                    raise TemplateError(f"{source}:{line}: token <<{key}>> is not a valid name: use letters,"
                                        " digits and underscores, not starting with a digit") from None
                raise TemplateError(
                    f"{source}:{line}: token <<{key}>> has no value;"
                    f" set it under vars: in targets.yaml or with --var {key}=VALUE"
                )
        elif kind not in ("literal", "end"):
            shown = key.rstrip("}")
            hint = f"; write <<{shown}>> (values are never HTML-escaped)" if kind == "no escape?" else ""
            raise TemplateError(f"{source}:{line}: unsupported tag ({kind}) near <<{key}>>{hint}")
        out.append((kind, key))
    # Linear for a token list: chevron appends with `output += ...`, which
    # CPython extends in place (bench/render.py shows time(2n) / time(n) near 2).
    return chevron.render(out, values)


def tokenize(template: str, source: str) -> list[Token]:
    """chevron's tokens for `template` under `<<` `>>`, with `<<x>>` as "no escape".

    Linear in the template's size. Rejects, with their line, what chevron gets
    wrong or we do not support: an empty tag (IndexError in chevron), an
    unclosed tag or section, a delimiter change. Comments are dropped, as chevron
    does; partials and `<<{x}>>` are yielded for the caller to reject.
    """
    tokens: list[Token] = []
    sections: list[tuple[str, int]] = []
    line, counted = 1, 0

    def line_at(i: int) -> int:
        # Positions only grow, so every newline is counted once.
        nonlocal line, counted
        line += template.count("\n", counted, i)
        counted = i
        return line

    # chevron's standalone state: true at the start and after a standalone tag.
    standalone = True
    pos = 0
    while (start := template.find("<<", pos)) != -1:
        literal_line, tag_line = line_at(pos), line_at(start)
        end = template.find(">>", start + 2)
        if end == -1:
            raise TemplateError(f"{source}:{tag_line}: unclosed tag {template[start:start + 20]!r}")
        tag = template[start + 2:end]
        if not tag.strip():
            raise TemplateError(f"{source}:{tag_line}: empty tag <<{tag}>>")
        kind = _KINDS.get(tag[0])
        key = (tag if kind is None else tag[1:]).strip()
        kind = kind or "no escape"
        if kind == "set delimiter":
            raise TemplateError(f"{source}:{tag_line}: unsupported tag (set delimiter) near <<{tag}>>")
        if kind in _SECTION_TAGS:
            sections.append((key, tag_line))
        elif kind == "end":
            if not sections:
                raise TemplateError(f"{source}:{tag_line}: <</{key}>> closes no open section")
            opened, opened_line = sections.pop()
            if key != opened:
                raise TemplateError(
                    f"{source}:{tag_line}: <</{key}>> closes section <<#{opened}>> of line {opened_line}")

        # chevron's l_sa_check and r_sa_check: a tag other than a value alone on
        # its line (only blanks around it) takes the line with it.
        literal = template[pos:start]
        pos = end + 2
        newline = literal.rfind("\n")
        blank_left = (newline != -1 or standalone) and not literal[newline + 1:].strip()
        rest = _BLANK_REST.match(template, pos) if blank_left and kind != "no escape" else None
        standalone = rest is not None
        if rest is not None:
            # split('\n', 1)[-1] in chevron: the blanks stay when no newline follows.
            if rest.group(1):
                pos = rest.end()
            if kind != "partial":
                literal = literal.rstrip(" ")

        if literal:
            tokens.append(("literal", literal, literal_line))
        if kind != "comment":
            tokens.append((kind, key, tag_line))
    if sections:
        key, opened_line = sections[-1]
        raise TemplateError(f"{source}:{opened_line}: section <<#{key}>> is never closed")
    if pos < len(template):
        tokens.append(("literal", template[pos:], line_at(pos)))
    return tokens
