"""One-line error messages: what every command prints for bad input."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(error: BaseException | str) -> str:
    """A message as one printable line: terminal colour codes dropped, whitespace collapsed,
    other control characters shown escaped."""
    text = " ".join(_ANSI.sub("", str(error)).split()) or type(error).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
