"""The vhost template, rendered by chevron with `<<` `>>` delimiters, strictly.

Chevron renders an unknown token as empty, HTML-escapes `<<x>>` and silently
drops `<<{x}>>` under custom delimiters. A vhost with a hole or an `&amp;`
in it is a broken site, so the token stream is checked first and every value
tag is turned into an unescaped one before chevron renders it.
"""

import re

import chevron
from chevron.tokenizer import ChevronError, tokenize

from deployer.errors import TemplateError

_VALUE_TAGS = {"variable", "no escape"}
_SECTION_TAGS = {"section", "inverted section"}


def render(template: str, values: dict[str, str], source: str) -> str:
    """Render `template`; `source` names it in errors (a file path)."""
    try:
        tokens = list(tokenize(template, def_ldel="<<", def_rdel=">>"))
    except ChevronError as e:
        raise TemplateError(f"{source}: {e}") from None
    out = []
    for tag, key in tokens:
        if tag == "literal" or tag == "end":
            out.append((tag, key))
        elif tag in _VALUE_TAGS | _SECTION_TAGS:
            if key not in values:
                raise TemplateError(
                    f"{source}:{_line_of(template, key)}: token <<{key}>> has no value;"
                    f" set it under vars: in targets.yaml or with --var {key}=VALUE"
                )
            out.append(("no escape" if tag in _VALUE_TAGS else tag, key))
        else:
            shown = key.rstrip("}")
            hint = f"; write <<{shown}>> (values are never HTML-escaped)" if tag == "no escape?" else ""
            raise TemplateError(
                f"{source}:{_line_of(template, shown)}: unsupported tag ({tag}) near <<{key}>>{hint}"
            )
    return chevron.render(out, values)


def _line_of(template: str, key: str) -> int:
    match = re.search(r"<<[^>]*?" + re.escape(key), template)
    return template.count("\n", 0, match.start()) + 1 if match else 1
