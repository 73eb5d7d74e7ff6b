"""Model-name wildcard matching, in Python (exact) and in CEL (for the CRD's rules).

Allow patterns are shell-style wildcards (``fnmatch``): ``*`` any run of characters, ``?`` one
character, ``[abc]`` / ``[!abc]`` one character from / not from a set. Matching is
case-sensitive, like model ids. The character set of a pattern is restricted (see
``fields.MODEL_PATTERN``: no regex metacharacters but ``.``, brackets closed and not nested) so
that the CEL translation below to an RE2 regular expression is faithful: only ``.`` needs
escaping.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

WILDCARD_CHARS = frozenset("*?[")


def is_wildcard(pattern: str) -> bool:
    """True when ``pattern`` contains a wildcard (and so is not an exact model id)."""
    return any(c in WILDCARD_CHARS for c in pattern)


def model_allowed(model: str, patterns: Iterable[str]) -> bool:
    """True when ``model`` matches at least one allow pattern."""
    return any(fnmatchcase(model, p) for p in patterns)


def cel_glob_regex(pattern_expr: str) -> str:
    """A CEL expression turning the glob held by ``pattern_expr`` into an anchored RE2 regex."""
    return (
        f"'^' + {pattern_expr}.replace('.', '\\\\.').replace('*', '.*').replace('?', '.')"
        ".replace('[!', '[^') + '$'"
    )


def cel_allowed(model_expr: str, allow_expr: str = "self.allow") -> str:
    """A CEL expression: ``model_expr`` matches one of the globs in ``allow_expr``."""
    return f"{allow_expr}.exists(p, {model_expr}.matches({cel_glob_regex('p')}))"
