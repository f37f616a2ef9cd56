"""A label map written as text, the one syntax the UI's label box and the `slicewise import --label` option share.

One label per line or comma-separated item: `name`, `name #rrggbb`, `value name` or `value name #rrggbb`;
the parts may also be joined by colons, as on a command line: `1:anterior:#e6194b`. Values default to the
lowest free one from 1, colours to a palette that stays readable on a grey image.
"""

from __future__ import annotations

import re

from data.errors import InvalidInput
from data.store_labels import COLOR
from data.volume import BACKGROUND, IGNORE, LABEL_VALUES

# Sasha Trubetskoy's palette of distinct colours, as the demo project uses
PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
)
_COLON_FORM = re.compile(r"^(\d+):(.*):(#\S*)$")


def _items(text: str) -> list[str]:
    items = [part.strip() for line in (text or "").splitlines() for part in line.split(",")]
    return [item for item in items if item]


def _words(item: str) -> list[str]:
    colon = _COLON_FORM.match(item)
    if colon:
        return [colon[1], *colon[2].split(), colon[3]]
    return item.split()


def parse_label_text(text: str) -> list[dict]:
    """[{"value", "name", "color"}] in the order written; InvalidInput saying which label is wrong and why."""
    items = _items(text)
    if not items:
        raise InvalidInput("give at least one label name, e.g. 'tumour' (one per line)")
    labels, used_values, used_names = [], set(), set()
    first, last = LABEL_VALUES.start, LABEL_VALUES.stop - 1
    for n, item in enumerate(items, start=1):
        words = _words(item)
        color = None
        if words and words[-1].startswith("#"):
            color = words.pop()
            if not COLOR.match(color):
                raise InvalidInput(f"label {item!r}: colour {color!r} must look like #e6194b")
        value = None
        if words and words[0].isdigit():
            value = int(words.pop(0))
        name = " ".join(words)
        if not name:
            raise InvalidInput(f"label {item!r} has no name")
        if value is None:
            value = next(v for v in LABEL_VALUES if v not in used_values)
        if value not in LABEL_VALUES:
            raise InvalidInput(
                f"label {name!r}: value {value} must be {first}..{last} "
                f"({BACKGROUND} is background, {IGNORE} 'not painted')"
            )
        if value in used_values:
            raise InvalidInput(f"label value {value} is used twice")
        if name.lower() in used_names:
            raise InvalidInput(f"label name {name!r} is used twice")
        used_values.add(value)
        used_names.add(name.lower())
        labels.append({"value": value, "name": name, "color": (color or PALETTE[(n - 1) % len(PALETTE)]).lower()})
    return labels
