"""Small checks of user-given values, shared by every validation at the boundary."""

from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """An integer as JSON, TOML or Python give it: not a bool, a float or a string."""
    return isinstance(value, int) and not isinstance(value, bool)
