"""What a command gave back: its exit code and the ends of its output.

Kept apart from the transports so that a dry run, which prints a plan and
runs nothing, does not import the SSH libraries (a tenth of a second).
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Tail:
    """The last `limit` bytes of a stream, and how many came before them.

    A migration that prints 300 MB must not take 300 MB of memory (nor put
    it in one JSON line): what is kept is the end, where errors are.
    """

    def __init__(self, limit: int = 256 * 1024):
        self.limit = limit
        self.data = bytearray()
        self.cut = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.cut += excess

    def text(self) -> str:
        kept = self.data.decode(errors="replace")
        return f"[{self.cut} earlier bytes of output not kept]\n{kept}" if self.cut else kept


# What Tail.text puts where it cut: a secret may have been cut in two there.
CUT_NOTE = re.compile(r"\[\d+ earlier bytes of output not kept\]\n")
