"""How commands print their `--json` reports."""

from __future__ import annotations

import json
from typing import TextIO


def print_json(obj, out: TextIO) -> None:
    json.dump(obj, out, indent=2, sort_keys=False)
    out.write("\n")
