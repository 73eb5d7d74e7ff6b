"""Path normalisation as properties: whatever the raw path, the sidecar either refuses it as
ambiguous or decides on (and forwards) one canonical path, and every spelling of a known route
lands on that route."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from openai_policy_sidecar.surfaces import ROUTES, AmbiguousPath, classify, normalise_path

RAW_CHARS = string.ascii_letters + string.digits + "/.%-_~:@+=,!;?#\\ \x00"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=RAW_CHARS, max_size=60))
def test_a_path_is_refused_or_canonical(raw: str) -> None:
    try:
        path = normalise_path(raw)
    except AmbiguousPath:
        return
    assert path.startswith("/") and "//" not in path and "%" not in path
    assert "/./" not in path + "/" and "/../" not in path + "/" and not path.endswith("/.")
    assert path == "/" or not path.endswith("/")
    assert normalise_path(path) == path  # idempotent: what is forwarded decides the same again


def _spellings(path: str) -> st.SearchStrategy[str]:
    """Ways to write ``path`` that a server may treat as the same resource."""
    segments = path.strip("/").split("/")

    def spell(choices: list[tuple[int, bool, int]], trailing: int) -> str:
        out = ""
        for segment, (slashes, dot, escape) in zip(segments, choices, strict=True):
            word = segment
            if escape < len(word) and word[escape].isalnum():  # one character percent-encoded
                word = word[:escape] + f"%{ord(word[escape]):02X}" + word[escape + 1 :]
            out += "/" * slashes + ("./" if dot else "") + word
        return out + "/" * trailing

    per_segment = st.tuples(st.integers(1, 3), st.booleans(), st.integers(0, 12))
    return st.builds(
        spell, st.lists(per_segment, min_size=len(segments), max_size=len(segments)), st.integers(0, 2)
    )


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_spelling_of_a_route_is_that_route(data: st.DataObject) -> None:
    route = data.draw(st.sampled_from([r for r in ROUTES if "{id}" not in r.label]))
    method, path = route.label.split(" ", 1)
    raw = data.draw(_spellings(path))
    assert normalise_path(raw) == path
    assert classify(method, normalise_path(raw)) == route
