"""Reading and writing spec YAML files, turning validation failures into errors that name the file,
the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gristmill.errors import SpecError

Model = TypeVar("Model", bound=BaseModel)

# Keys of Azure ML YAML files that carry no meaning for Gristmill and are dropped on load.
IGNORED_KEYS = ("$schema", "schema_version")

# Hints appended to validation messages, by the last element of the field path.
_FIELD_HINTS: dict[str, str] = {
    "days": "durations look like {days: 1, hours: 0, minutes: 0}",
    "hours": "durations look like {days: 1, hours: 0, minutes: 0}",
    "minutes": "durations look like {days: 1, hours: 0, minutes: 0}",
    "type": "types: string, integer, long, float, double, boolean, datetime, binary, float_vector",
    "index_columns": "write index_columns: [{name: account_id, type: string}]",
    "timestamp_column": "write timestamp_column: {name: ts}",
    "features": "write features: [{name: f1, type: double}]",
}


def read_yaml(path: Path) -> dict[str, Any]:
    """Load a YAML mapping from ``path``, dropping Azure-only keys such as ``$schema``."""
    if not path.exists():
        raise SpecError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpecError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return {k: v for k, v in data.items() if k not in IGNORED_KEYS}


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def validation_message(error: ValidationError, source: str) -> str:
    """One readable message per failed field: ``file: field.path: what is wrong (fix)``."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif item["type"] == "missing":
            msg = "required field is missing; add it"
        hint = _FIELD_HINTS.get(str(item["loc"][-1]) if item["loc"] else "", "")
        if hint and item["type"] in ("missing", "model_type", "dict_type", "list_type"):
            msg = f"{msg} ({hint})"
        lines.append(f"{source}: {loc or '<top>'}: {msg}")
    return "\n".join(lines)


def validate(model: type[Model], data: Any, source: str, context: dict[str, Any] | None = None) -> Model:
    """Validate ``data`` into ``model``; failures raise ``SpecError`` naming ``source`` and the field."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise SpecError(validation_message(exc, source)) from None
