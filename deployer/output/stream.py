"""The stream a run writes to, which a reader may close at any time:
`deploy ... | head` reads its lines and goes. The run must go on to its end
(a deploy stopped half-way by its own output is a deploy nobody undid), so
once the reader is gone, what is written is dropped."""

import os
from typing import IO


class Unbroken:
    """`stream`, with writes and flushes that never fail for a reader that left."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except (OSError, ValueError):  # a reader gone, a full disk; ValueError: the stream was closed
                self._left()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._left()

    def _left(self) -> None:
        self.gone = True
        # The interpreter flushes stdout once more at exit, and would print
        # a BrokenPipeError of its own: what is left in its buffer goes to
        # /dev/null instead.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):  # not a file (a StringIO in a test)
            pass

    def __getattr__(self, name: str):
        return getattr(self.stream, name)  # isatty, fileno, encoding: rich asks for them
