"""The failures a command expects, each told in one line with the exit code it ends with.

Exit codes: 2 for a command line or settings the shop refuses (nothing was tried), 1 for
something that was tried and failed (a database or Redis that does not answer, a migration).
"""

from __future__ import annotations

from sqlalchemy.engine import make_url

USAGE = 2
FAILED = 1


class CommandFailed(Exception):
    """A command cannot go on; `str(self)` is the line to print, `code` the exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def reason(exc: BaseException) -> str:
    """One line about an exception: its first line of text, else its type's name."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    return first or type(exc).__name__


def safe_url(url: str) -> str:
    """A database or Redis URL as it may be printed: any password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: print no part that could be a secret
        return url.split("@")[-1] if "@" in url else url
