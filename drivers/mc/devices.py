"""MELSEC device names, their MC protocol codes, and the address syntax integrators type.

An address is written as GX Works shows it: the device name, then the number, in decimal for
most devices and in hexadecimal for X, Y, B and W (``X1F`` is the 32nd input, ``D100`` data
register 100, ``ZR2000`` file register 2000). The MC protocol carries the same number: as a
3-byte integer in binary frames, as six characters in ASCII frames, decimal or hexadecimal as
the MC protocol manual's device table says (as GX Works numbers the device, except ZR: its
serial numbers run past 999999, so ASCII frames give them in hexadecimal). Six decimal digits
end the other decimal devices at 999999.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class DeviceKind:
    """One MELSEC device: what a frame calls it, how it is numbered, and bit or word."""

    name: str
    code: int  # the binary device code
    bits: bool  # a bit device (M, X...) rather than a word device (D, W...)
    base: int  # 10 or 16: how GX Works numbers it
    last: int  # the highest number the 3E frame can address (the PLC's own range may be less)
    frame_base: int = 0  # 10 or 16: how an ASCII frame writes the number (0: as ``base``)

    @property
    def ascii_base(self) -> int:
        return self.frame_base or self.base

    @property
    def ascii_code(self) -> bytes:
        """The two-character code of ASCII frames (``D*``, ``SM``, ``ZR``)."""
        return self.name.ljust(2, "*").encode()


#: Six decimal digits in an ASCII frame.
_DECIMAL_LAST: Final = 999_999

#: The devices the driver reads (issue 18): bit devices SM, X, Y, M, L, B; word devices SD, D,
#: W, R, ZR. The 3-byte number field ends every device at 0xFFFFFF, six decimal digits sooner.
DEVICES: Final[dict[str, DeviceKind]] = {
    d.name: d
    for d in (
        DeviceKind("SM", 0x91, True, 10, _DECIMAL_LAST),
        DeviceKind("SD", 0xA9, False, 10, _DECIMAL_LAST),
        DeviceKind("X", 0x9C, True, 16, 0xFFFFFF),
        DeviceKind("Y", 0x9D, True, 16, 0xFFFFFF),
        DeviceKind("M", 0x90, True, 10, _DECIMAL_LAST),
        DeviceKind("L", 0x92, True, 10, _DECIMAL_LAST),
        DeviceKind("B", 0xA0, True, 16, 0xFFFFFF),
        DeviceKind("D", 0xA8, False, 10, _DECIMAL_LAST),
        DeviceKind("W", 0xB4, False, 16, 0xFFFFFF),
        DeviceKind("R", 0xAF, False, 10, 32767),
        DeviceKind("ZR", 0xB0, False, 10, 0xFFFFFF, frame_base=16),
    )
}
BY_CODE: Final[dict[int, DeviceKind]] = {d.code: d for d in DEVICES.values()}
BY_ASCII: Final[dict[bytes, DeviceKind]] = {d.ascii_code: d for d in DEVICES.values()}

# Two-letter names first, so SM is not read as S + M... and ZR not as Z + R.
_ADDRESS = re.compile(r"^(SM|SD|ZR|[XYMLBDWR])([0-9A-Fa-f]+)$")


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A parsed address: device and number (as an integer, whatever base it was written in)."""

    device: str
    number: int

    @property
    def kind(self) -> DeviceKind:
        return DEVICES[self.device]

    def __str__(self) -> str:
        return format_address(self.device, self.number)


def format_address(device: str, number: int) -> str:
    """``D100``, ``X1F``: as GX Works writes it (hexadecimal upper case for X, Y, B, W)."""
    return f"{device}{number:X}" if DEVICES[device].base == 16 else f"{device}{number}"


def parse_address(text: str) -> Address:
    """``D100`` -> Address("D", 100); ``x1f`` -> Address("X", 31). Raises ``ValueError`` with
    what is wrong, for the config error at the key."""
    m = _ADDRESS.match(text.strip().upper())
    if m is None:
        names = ", ".join(DEVICES)
        raise ValueError(f"not a MELSEC address: {text!r} (a device {names} and a number)")
    device, digits = m.group(1), m.group(2)
    kind = DEVICES[device]
    if kind.base == 10 and not digits.isdigit():
        raise ValueError(f"{device} is numbered in decimal: {text!r}")
    number = int(digits, kind.base)
    if number > kind.last:
        raise ValueError(f"{text}: {device} goes up to {format_address(device, kind.last)}")
    return Address(device, number)
