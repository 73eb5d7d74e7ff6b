"""Form bodies (``multipart/form-data`` and ``application/x-www-form-urlencoded``): the fields a
policy decision needs, read from a body already held within ``requests.maxBodyBytes``.

Image edits and variations and audio transcriptions and translations are uploads: their
``model``, ``n``, ``size``, ``quality``... are form fields next to the files. The policy applies
to them exactly as to a JSON body (model allow-list, pinning, pricing), so the sidecar reads the
text fields and, of each file, only its name, type and size (what metering needs): no file
content is kept or logged. When a stage changes a field (a pinned model) the body is rebuilt with
the same parts in the same order and a fresh boundary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from . import refusals

# A text field longer than this is not a parameter (a prompt is at most 32,000 characters).
MAX_FIELD_BYTES = 256 * 1024
MAX_PARTS = 256
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^;,\s]{1,200}))', re.IGNORECASE)
_DISPOSITION_PARAM = re.compile(r';\s*([A-Za-z*]+)="((?:[^"\\]|\\.)*)"|;\s*([A-Za-z*]+)=([^;\s]*)')


@dataclass(frozen=True)
class FilePart:
    """An uploaded file as metering sees it: never its content."""

    name: str
    filename: str
    content_type: str
    size: int


@dataclass
class FormBody:
    """The text fields (each given once: a repeated one is refused) and the files of a form body."""

    kind: str  # "multipart" or "urlencoded"
    boundary: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)
    # multipart only: each part's raw headers and body, to rebuild the body with a changed field
    _parts: list[tuple[str, bytes, bytes]] = field(default_factory=list, repr=False)
    raw: bytes = field(default=b"", repr=False)

    def files_named(self, *names: str) -> list[FilePart]:
        """The files of these fields (``image`` and ``image[]`` are one field to OpenAI)."""
        wanted = set(names) | {f"{name}[]" for name in names}
        return [part for part in self.files if part.name in wanted]

    def as_body(self) -> dict[str, Any]:
        """The text fields as the JSON body the pipeline's stages read (``n`` an integer,
        ``stream`` a boolean, as OpenAI reads the form)."""
        body: dict[str, Any] = dict(self.fields)
        for name in ("n", "max_tool_calls"):
            value = body.get(name)
            if isinstance(value, str) and value.strip().isdigit():
                body[name] = int(value)
        if isinstance(body.get("stream"), str):
            body["stream"] = body["stream"].strip().lower() == "true"
        return body

    def encode_fields(self, body: Mapping[str, Any]) -> bytes:
        """The body to send upstream: as received, with the fields a stage changed (a pinned
        model) rewritten in place; the boundary is kept, so the Content-Type still holds."""
        changes = {
            name: _text(value)
            for name, value in body.items()
            if value is not None
            and (name not in self.fields or _text(value) != self.fields[name])
            and name not in ("n", "stream")  # read from the form, never rewritten
        }
        if self.kind == "urlencoded":
            return urlencode(list({**self.fields, **changes}.items())).encode()
        if not changes:
            return self.raw
        boundary = self.boundary.decode()
        out: list[bytes] = []
        done: set[str] = set()
        for name, headers, part in self._parts:
            if name in changes and name not in done:
                part = changes[name].encode()
                done.add(name)
            elif name in changes:
                continue  # a repeated field: one value, the new one
            out.append(b"--" + boundary.encode() + b"\r\n" + headers + b"\r\n\r\n" + part + b"\r\n")
        for name, value in changes.items():
            if name not in done:
                head = f'Content-Disposition: form-data; name="{name}"'.encode()
                out.append(
                    b"--" + boundary.encode() + b"\r\n" + head + b"\r\n\r\n" + value.encode() + b"\r\n"
                )
        out.append(b"--" + boundary.encode() + b"--\r\n")
        return b"".join(out)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def is_form(content_type: str) -> bool:
    lowered = content_type.lower()
    return lowered.startswith("multipart/form-data") or lowered.startswith(
        "application/x-www-form-urlencoded"
    )


def parse_form(raw: bytes, content_type: str) -> FormBody:
    """The fields of a form body; a malformed one is an OpenAI-shaped 400."""
    if content_type.lower().startswith("application/x-www-form-urlencoded"):
        try:
            pairs = parse_qsl(
                raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw), errors="strict"
            )
        except (UnicodeDecodeError, ValueError):
            raise _malformed("the form body is not valid urlencoded UTF-8") from None
        form = FormBody("urlencoded")
        for name, value in pairs:
            _set_field(form, name, value)
        return form
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise _malformed("the multipart Content-Type has no boundary")
    return _parse_multipart(raw, (match.group(1) or match.group(2)).encode())


def _parse_multipart(raw: bytes, boundary: bytes) -> FormBody:
    form = FormBody("multipart", boundary=boundary, raw=raw)
    delimiter = b"--" + boundary
    start = raw.find(delimiter)
    if start == -1:
        raise _malformed("the multipart body does not contain its boundary")
    position = start + len(delimiter)
    while True:
        if raw.startswith(b"--", position):
            return form  # the closing delimiter
        if not raw.startswith(b"\r\n", position):
            raise _malformed("a multipart delimiter is not followed by a line break")
        position += 2
        end = raw.find(b"\r\n" + delimiter, position)
        if end == -1:
            raise _malformed("the multipart body ends before its closing boundary")
        head_end = raw.find(b"\r\n\r\n", position, end)
        if head_end == -1:
            raise _malformed("a multipart part has no header block")
        headers, body = raw[position:head_end], raw[head_end + 4 : end]
        _add_part(form, headers, body)
        if len(form._parts) > MAX_PARTS:
            raise _malformed(f"the form has more than {MAX_PARTS} parts")
        position = end + 2 + len(delimiter)


def _add_part(form: FormBody, headers: bytes, body: bytes) -> None:
    disposition = ""
    part_type = "text/plain"
    for line in headers.split(b"\r\n"):
        name, _, value = line.decode("utf-8", "replace").partition(":")
        if name.strip().lower() == "content-disposition":
            disposition = value.strip()
        elif name.strip().lower() == "content-type":
            part_type = value.strip()
    params = _disposition_params(disposition)
    field_name = params.get("name")
    if not disposition.lower().startswith("form-data") or not field_name:
        raise _malformed("a multipart part has no form-data name")
    name = field_name
    form._parts.append((name, headers, body))
    if "filename" in params:
        form.files.append(FilePart(name, params["filename"], part_type, len(body)))
        return
    if len(body) > MAX_FIELD_BYTES:
        raise refusals.invalid_request(
            f"Invalid '{name}': the form field is larger than {MAX_FIELD_BYTES} bytes.",
            param=name,
            code="invalid_value",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise refusals.invalid_request(
            f"Invalid '{name}': the form field is not UTF-8 text.", param=name, code="invalid_value"
        ) from None
    _set_field(form, name, text)


def _set_field(form: FormBody, name: str, value: str) -> None:
    """One text field; a repeated one is refused: the sidecar and OpenAI could each read a
    different copy (a second ``model`` would slip past the allow-list)."""
    if name in form.fields and not name.endswith("[]"):
        raise refusals.invalid_request(
            f"Invalid '{name}': the form field is given more than once.", param=name, code="invalid_value"
        )
    form.fields[name] = value


def _disposition_params(disposition: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for quoted_key, quoted, bare_key, bare in _DISPOSITION_PARAM.findall(disposition):
        key = (quoted_key or bare_key).lower()
        params[key] = quoted.replace('\\"', '"') if quoted_key else bare
    return params


def _malformed(why: str) -> refusals.Refusal:
    return refusals.invalid_request(
        f"We could not parse the form body of your request: {why}.", code="invalid_form"
    )
