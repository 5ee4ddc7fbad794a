"""The vhost template, rendered by chevron with `<<` `>>` delimiters, strictly.

Chevron renders an unknown token as empty, HTML-escapes `<<x>>` and silently
drops `<<{x}>>` under custom delimiters. A vhost with a hole or an `&amp;`
in it is a broken site, so the token stream is checked first and every value
tag is turned into an unescaped one before chevron renders it.
"""

import chevron
from chevron.tokenizer import ChevronError, tokenize

from deployer.errors import TemplateError

_VALUE_TAGS = {"variable", "no escape"}
_SECTION_TAGS = {"section", "inverted section"}


def render(template: str, values: dict[str, str], source: str) -> str:
    """Render `template`; `source` names it in errors (a file path)."""
    # chevron yields no line numbers (its own error lines are off after
    # standalone tags), so tags are located here, split exactly as it does.
    lines = iter(_tag_lines(template, source))
    try:
        tokens = list(tokenize(template, def_ldel="<<", def_rdel=">>"))
    except ChevronError as e:
        raise TemplateError(f"{source}: {' '.join(str(e).split())}") from None
    out = []
    for tag, key in tokens:
        line = 0 if tag == "literal" else next(lines)
        if tag == "literal" or tag == "end":
            out.append((tag, key))
        elif tag in _VALUE_TAGS | _SECTION_TAGS:
            if key not in values:
                raise TemplateError(
                    f"{source}:{line}: token <<{key}>> has no value;"
                    f" set it under vars: in targets.yaml or with --var {key}=VALUE"
                )
            out.append(("no escape" if tag in _VALUE_TAGS else tag, key))
        else:
            shown = key.rstrip("}")
            hint = f"; write <<{shown}>> (values are never HTML-escaped)" if tag == "no escape?" else ""
            raise TemplateError(f"{source}:{line}: unsupported tag ({tag}) near <<{key}>>{hint}")
    return chevron.render(out, values)


def _tag_lines(template: str, source: str) -> list[int]:
    """The line of each tag chevron yields (all but comments), in its order.

    Also rejects, with their line, what chevron gets wrong: an empty tag
    (IndexError in chevron), an unclosed tag or section, a delimiter change.
    """
    lines: list[int] = []
    sections: list[tuple[str, int]] = []
    pos = 0
    while (start := template.find("<<", pos)) != -1:
        line = template.count("\n", 0, start) + 1
        end = template.find(">>", start + 2)
        if end == -1:
            raise TemplateError(f"{source}:{line}: unclosed tag {template[start:start + 20]!r}")
        tag = template[start + 2:end]
        pos = end + 2
        if not tag.strip():
            raise TemplateError(f"{source}:{line}: empty tag <<{tag}>>")
        if tag[0] == "!":
            continue
        if tag[0] == "=":
            raise TemplateError(f"{source}:{line}: unsupported tag (set delimiter) near <<{tag}>>")
        lines.append(line)
        if tag[0] in "#^":
            sections.append((tag[1:].strip(), line))
        elif tag[0] == "/":
            key = tag[1:].strip()
            if not sections:
                raise TemplateError(f"{source}:{line}: <</{key}>> closes no open section")
            opened, opened_line = sections.pop()
            if key != opened:
                raise TemplateError(
                    f"{source}:{line}: <</{key}>> closes section <<#{opened}>> of line {opened_line}")
    if sections:
        key, line = sections[-1]
        raise TemplateError(f"{source}:{line}: section <<#{key}>> is never closed")
    return lines
