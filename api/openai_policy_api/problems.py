"""Turn pydantic's validation errors into messages a platform engineer can act on.

Each problem is reported as ``<path>: <what is wrong, in words>``, the path written the way it
appears in the YAML (``spec.budget.limits[0].usd``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

# Human wording for the regular expressions used in the model (the key is the pattern).
PATTERN_HINTS: dict[str, str] = {}


def pattern_hint(pattern: str, hint: str) -> str:
    """Register a human wording for ``pattern`` and return the pattern (used where fields are declared)."""
    PATTERN_HINTS[pattern] = hint
    return pattern


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy document."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyError(ValueError):
    """A policy document was refused. ``problems`` lists each bad field; ``str()`` reads well in a log."""

    def __init__(self, problems: Sequence[Problem], *, subject: str = "OpenAIPolicy") -> None:
        self.problems: list[Problem] = list(problems)
        self.subject = subject
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return f"invalid {self.subject}: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid {self.subject} ({len(self.problems)} problems):\n{lines}"


def format_path(loc: Sequence[str | int]) -> str:
    """``("spec", "budget", "limits", 0, "usd")`` -> ``spec.budget.limits[0].usd``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _known_fields(root: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """The document names (aliases) allowed in the object at ``loc`` (its last part excluded)."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or n for n, f in model.model_fields.items()]
    return None


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X``, ``X | None``, ``list[X]`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def describe_error(error: ErrorDetails, root: type[BaseModel]) -> list[Problem]:
    """One pydantic error (a dict from ``ValidationError.errors()``) as problems with paths."""
    loc = [
        p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-union")))
    ]
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    path = format_path(loc)

    if kind == "policy_rule":
        return [Problem(format_path([*loc, *_split(rel)]), msg) for rel, msg in ctx["problems"]]
    if kind == "missing":
        return [Problem(path, "is required")]
    if kind == "extra_forbidden":
        field = str(loc[-1]) if loc else "?"
        known = _known_fields(root, loc) or []
        close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean {close[0]!r}?"
        elif known:
            hint = f"; known fields here: {', '.join(known)}"
        else:
            hint = ""
        return [Problem(path, f"unknown field{hint}")]
    messages: dict[str, str] = {
        "greater_than": f"must be greater than {_number(ctx.get('gt'))} (got {_show(value)})",
        "greater_than_equal": f"must be at least {_number(ctx.get('ge'))} (got {_show(value)})",
        "less_than": f"must be less than {_number(ctx.get('lt'))} (got {_show(value)})",
        "less_than_equal": f"must be at most {_number(ctx.get('le'))} (got {_show(value)})",
        "int_type": f"must be a whole number (got {_show(value)})",
        "int_parsing": f"must be a whole number (got {_show(value)})",
        "int_from_float": f"must be a whole number (got {_show(value)})",
        "float_type": f"must be a number (got {_show(value)})",
        "float_parsing": f"must be a number (got {_show(value)})",
        "bool_type": f"must be true or false (got {_show(value)})",
        "bool_parsing": f"must be true or false (got {_show(value)})",
        "string_type": f"must be a string (got {_show(value)})",
        "dict_type": f"must be a mapping of names to values (got {_show(value)})",
        "model_type": f"must be a mapping of fields (got {_show(value)})",
        "model_attributes_type": f"must be a mapping of fields (got {_show(value)})",
        "list_type": f"must be a list (got {_show(value)})",
        "too_short": _too_short(ctx, value),
        "too_long": _too_long(ctx, value),
        "string_too_short": "must not be empty"
        if ctx.get("min_length") == 1
        else f"must be at least {ctx.get('min_length')} characters long",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters long",
        "literal_error": _choice(str(ctx.get("expected", "")), value),
        "enum": f"must be one of {ctx.get('expected', '')} (got {_show(value)})",
        "string_pattern_mismatch": _pattern(ctx.get("pattern", ""), value),
    }
    if kind in messages:
        return [Problem(path, messages[kind])]
    if kind in ("value_error", "assertion_error"):
        text = str(ctx.get("error", error.get("msg", "")))
        return [Problem(path, text)]
    return [Problem(path, str(error.get("msg", kind)).lower())]


def _too_short(ctx: dict[str, Any], value: Any) -> str:
    n = ctx.get("min_length", 1)
    return f"must have at least {n} item{'s' if n != 1 else ''}"


def _too_long(ctx: dict[str, Any], value: Any) -> str:
    n = ctx.get("max_length")
    return f"must have at most {n} item{'s' if n != 1 else ''}"


def _choice(expected: str, value: Any) -> str:
    if " or " in expected or "," in expected:
        return f"must be one of {expected} (got {_show(value)})"
    return f"must be {expected} (got {_show(value)})"


def _pattern(pattern: str, value: Any) -> str:
    hint = PATTERN_HINTS.get(pattern)
    if hint:
        return f"must be {hint} (got {_show(value)})"
    return f"must match the pattern {pattern} (got {_show(value)})"


def _split(relative: str) -> list[str | int]:
    """``limits[1].window`` -> ``["limits", 1, "window"]``."""
    parts: list[str | int] = []
    for chunk in relative.split("."):
        while "[" in chunk:
            head, _, rest = chunk.partition("[")
            if head:
                parts.append(head)
            index, _, chunk = rest.partition("]")
            parts.append(int(index) if index.isdigit() else index)
        if chunk:
            parts.append(chunk)
    return parts


def policy_error(
    exc: ValidationError,
    root: type[BaseModel],
    *,
    prefix: Sequence[str | int] = (),
    subject: str = "OpenAIPolicy",
) -> PolicyError:
    """Convert a pydantic ``ValidationError`` raised while validating ``root``."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        located: ErrorDetails = {**error, "loc": (*prefix, *error["loc"])}
        for problem in describe_error(located, root):
            if problem not in problems:
                problems.append(problem)
    return PolicyError(problems, subject=subject)
