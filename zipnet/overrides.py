"""Values written back as Hydra overrides, and an override's key: what the sweeper and the
trainer share, with nothing of the engine behind it (a plain Hydra app's sweep imports this)."""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import ListConfig

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]*")


def override_value(value: Any) -> str:
    """A Python value as a Hydra override value that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if _BARE.fullmatch(text) and text.lower() not in ("true", "false", "null", "inf", "nan"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override(key: str, value: Any) -> str:
    return f"{key}={override_value(value)}"


def override_key(text: str) -> str:
    """`+a.b=1` -> `a.b`."""
    return text.split("=", 1)[0].lstrip("+~")
