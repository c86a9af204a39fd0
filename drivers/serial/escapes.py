"""Backslash escapes in both directions: YAML text to wire bytes, wire bytes to log text.

YAML processes ``\\r`` and ``\\x02`` only in double-quoted strings; integrators often write
single-quoted or plain strings (regexes are easier to read that way), so markers and requests are
decoded here as well. Logs and ``sniff`` print frames with the same escapes, so what the operator
sees can be pasted back into the YAML.
"""

from __future__ import annotations

import re

_SIMPLE = {
    "r": b"\r",
    "n": b"\n",
    "t": b"\t",
    "0": b"\x00",
    "a": b"\x07",
    "b": b"\x08",
    "f": b"\x0c",
    "v": b"\x0b",
    "e": b"\x1b",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.|$)", re.S)
_SHOWN = {0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x5C: "\\\\"}


def decode_escapes(text: str) -> bytes:
    """Wire bytes for ``text``; characters up to U+00FF stand for one byte each.

    Raises ``ValueError`` for an unknown escape or a character that is not one byte, so config
    validation points at the key.
    """
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += _latin1(text[pos : m.start()])
        code = m.group(1)
        if code.startswith("x") and len(code) == 3:
            out.append(int(code[1:], 16))
        elif code in _SIMPLE:
            out += _SIMPLE[code]
        else:
            shown = "\\" + code if code else "a trailing \\"
            raise ValueError(
                f"unknown escape {shown!r}: use \\r \\n \\t \\0 \\e \\\\ or \\xHH (two hex digits)"
            )
        pos = m.end()
    out += _latin1(text[pos:])
    return bytes(out)


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{text[exc.start]!r} is not a single byte: write bytes above 0x7F as \\xHH"
        ) from None


def printable(data: bytes) -> str:
    """``data`` as ASCII with escapes for everything unprintable (``ST,GS\\r\\n``, ``\\x02``)."""
    parts = []
    for byte in data:
        if byte in _SHOWN:
            parts.append(_SHOWN[byte])
        elif 0x20 <= byte < 0x7F:
            parts.append(chr(byte))
        else:
            parts.append(f"\\x{byte:02x}")
    return "".join(parts)
