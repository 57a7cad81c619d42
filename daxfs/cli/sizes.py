"""Sizes as people type them: 64M, 1.5G, 4GiB, 1048576 (binary units), for every command and tool."""

from __future__ import annotations

import re

import click

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'256M', '1.5G', '4GiB', '1048576' -> bytes (a fraction is rounded down to a whole byte)."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 64M, 1.5G, 1048576)")
    number, unit = m.group(1), UNITS[m.group(2).upper()]
    whole, _, frac = number.partition(".")
    return int(whole) * unit + (int(frac) * unit) // 10 ** len(frac) if frac else int(whole) * unit


class SizeType(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
