"""Validation of a project's name and label map ([{"value": 1, "name": "anterior", "color": "#ff0000"}])."""

from __future__ import annotations

import re

from data.errors import InvalidInput
from data.volume import BACKGROUND, IGNORE, LABEL_VALUES

COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
LABEL_KEYS = {"value", "name", "color"}
MAX_NAME = 200


def validate_project_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("a project needs a name")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise InvalidInput(f"project name is too long ({len(name)} characters, at most {MAX_NAME})")
    return name


def validate_labels(labels) -> list[dict]:
    """Return the label map normalised (names stripped, colours lower-case), sorted by value."""
    if not isinstance(labels, list) or not labels:
        raise InvalidInput(
            'a project needs at least one label, e.g. [{"value": 1, "name": "lesion", "color": "#ff0000"}]'
        )
    out, seen_values, seen_names = [], set(), set()
    for n, label in enumerate(labels, start=1):
        if not isinstance(label, dict):
            raise InvalidInput(f"label {n} must be an object with value, name and color")
        missing, extra = LABEL_KEYS - label.keys(), label.keys() - LABEL_KEYS
        if missing or extra:
            problems = [f"missing {', '.join(sorted(missing))}"] if missing else []
            problems += [f"unknown {', '.join(sorted(map(str, extra)))}"] if extra else []
            raise InvalidInput(f"label {n}: {'; '.join(problems)} (expected value, name, color)")
        value, name, color = label["value"], label["name"], label["color"]
        if isinstance(value, bool) or not isinstance(value, int) or value not in LABEL_VALUES:
            raise InvalidInput(
                f"label {n}: value must be a whole number from {LABEL_VALUES.start} to {LABEL_VALUES.stop - 1} "
                f"({BACKGROUND} is background, {IGNORE} means not annotated), got {value!r}"
            )
        if value in seen_values:
            raise InvalidInput(f"label value {value} is used twice")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"label {value} needs a name")
        name = name.strip()
        if len(name) > MAX_NAME:
            raise InvalidInput(f"label {value}: name is too long (at most {MAX_NAME} characters)")
        if name.lower() in seen_names:
            raise InvalidInput(f"label name {name!r} is used twice")
        if not isinstance(color, str) or not COLOR.match(color):
            raise InvalidInput(f"label {value}: color must look like #rrggbb, got {color!r}")
        seen_values.add(value)
        seen_names.add(name.lower())
        out.append({"value": value, "name": name, "color": color.lower()})
    return sorted(out, key=lambda label: label["value"])
