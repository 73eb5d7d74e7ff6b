"""Form bodies read for the policy: fields, files by size only, malformed bodies refused, and a
changed field rewritten in place with every other byte kept."""

from __future__ import annotations

import pytest

from openai_policy_sidecar import refusals
from openai_policy_sidecar.form_body import MAX_FIELD_BYTES, MAX_PARTS, parse_form

BOUNDARY = "xyzzy42"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
FILE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # binary, CRLFs and all


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"Content-Disposition: {disposition}\r\n"
        if filename:
            head += "Content-Type: image/png\r\n"
        out += f"--{BOUNDARY}\r\n{head}\r\n".encode() + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_fields_and_files_by_size_only():
    raw = multipart(("model", b"gpt-image-1", None), ("image[]", FILE, "cat.png"), ("n", b"2", None))
    form = parse_form(raw, CONTENT_TYPE)
    assert form.fields == {"model": "gpt-image-1", "n": "2"}
    assert [(f.name, f.filename, f.size) for f in form.files] == [("image[]", "cat.png", len(FILE))]
    assert form.files_named("image") == form.files
    assert form.as_body() == {"model": "gpt-image-1", "n": 2}


def test_a_changed_field_is_rewritten_and_nothing_else():
    raw = multipart(("model", b"gpt-4o-transcribe", None), ("file", FILE, "talk.wav"))
    form = parse_form(raw, CONTENT_TYPE)
    assert form.encode_fields(form.as_body()) == raw  # nothing changed: the very same bytes
    body = {**form.as_body(), "model": "whisper-1"}
    sent = form.encode_fields(body)
    assert sent == raw.replace(b"gpt-4o-transcribe", b"whisper-1")
    again = parse_form(sent, CONTENT_TYPE)  # the boundary is kept: the Content-Type still holds
    assert again.fields["model"] == "whisper-1" and again.files[0].size == len(FILE)


def test_urlencoded():
    form = parse_form(b"model=dall-e-2&prompt=a+cat&n=3", "application/x-www-form-urlencoded")
    assert form.as_body() == {"model": "dall-e-2", "prompt": "a cat", "n": 3}
    assert form.encode_fields({**form.as_body(), "model": "dall-e-3"}) == b"model=dall-e-3&prompt=a+cat&n=3"


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"", CONTENT_TYPE),
        (multipart(("model", b"x", None))[:-20], CONTENT_TYPE),  # no closing boundary
        (multipart(("model", b"x", None)), "multipart/form-data"),  # no boundary parameter
        (f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--".encode(), CONTENT_TYPE),
        (f"--{BOUNDARY}\r\nno header block".encode(), CONTENT_TYPE),
        (multipart(("model", b"\xff\xfe", None)), CONTENT_TYPE),  # a field that is not UTF-8
        (multipart(("prompt", b"a" * (MAX_FIELD_BYTES + 1), None)), CONTENT_TYPE),
        (multipart(*[("f", b"x", None)] * (MAX_PARTS + 1)), CONTENT_TYPE),
        (b"a=%ff", "application/x-www-form-urlencoded"),
        # Two models: the sidecar and OpenAI could read different ones, so neither is trusted.
        (multipart(("model", b"dall-e-2", None), ("model", b"gpt-image-1", None)), CONTENT_TYPE),
        (b"model=dall-e-2&model=gpt-image-1", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_forms_are_a_clear_400(raw, content_type):
    with pytest.raises(refusals.Refusal) as refused:
        parse_form(raw, content_type)
    assert refused.value.status == 400 and refused.value.message
