"""What a printable name is: no control, invisible or look-alike character, normalized.

The file library's names and every path inside a folder bundle follow these character rules,
so a name shown in a list, a log line or an event is exactly what it looks like (a name with a
newline could forge a whole log line; a bidirectional override could hide its extension).
"""

from __future__ import annotations

import unicodedata

_INVISIBLE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}
"""Unicode categories of controls, format characters (bidirectional overrides among them),
private, unassigned and line/paragraph separators: names that hide what they are."""


def printable(name: str) -> bool:
    """Whether ``name`` holds only characters that show as themselves, NFC-normalized, with no
    leading or trailing space."""
    return (
        name == name.strip()
        and unicodedata.normalize("NFC", name) == name
        and not any(_hidden(c) for c in name)
    )


def _hidden(char: str) -> bool:
    category = unicodedata.category(char)
    return category in _INVISIBLE or (category == "Zs" and char != " ")
