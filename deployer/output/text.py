"""Text as a terminal or a build log may show it."""

import unicodedata

MASK = "********"


def printable_lines(text: str) -> str:
    """Text as a terminal or a build log may show it, line breaks kept: what
    hosts wrote in it (a command's output, a lock's owner, a history line)
    cannot move the cursor, erase or overwrite a line, set the title or the
    clipboard, reorder what follows, or forge a line. LF and CR LF are line
    breaks; a tab or another space is a space; anything else that is not
    printable (a lone CR, ESC, BEL, the other C0 and C1 controls, DEL,
    format characters such as U+202E, U+2028 and U+2029) is a `?`."""
    return "\n".join(line if line.isprintable() else "".join(map(_stand_in, line))
                     for line in text.replace("\r\n", "\n").split("\n"))


def _stand_in(c: str) -> str:
    if c.isprintable():
        return c
    return " " if c == "\t" or unicodedata.category(c) == "Zs" else "?"


def shown(path: str) -> str:
    """A file name as it can be printed: one with a line break or another
    control character in it is shown quoted, so it cannot forge a line."""
    return path if path.isprintable() else repr(path)


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def nonblank_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]
