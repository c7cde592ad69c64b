"""The shell examples of README.md, as the unit and e2e tests of the README read them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

MARKER = "<!-- readme-examples:"
"""An HTML comment (invisible on GitHub) right before a ```sh block that the e2e test runs as written."""

_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def shell_blocks(text: str | None = None) -> list[tuple[bool, str]]:
    """Every ```sh block of the README in order: (marked to be run by the e2e test, its text)."""
    text = README.read_text() if text is None else text
    return [(_marked(text, m.start()), m[1]) for m in _BLOCK.finditer(text)]


def _marked(text: str, start: int) -> bool:
    before = text[:start].rstrip().splitlines()
    return bool(before) and before[-1].startswith(MARKER)


def runnable_script() -> str:
    """The marked blocks joined in README order: they build on each other (shell variables)."""
    return "\n".join(body for marked, body in shell_blocks() if marked)
