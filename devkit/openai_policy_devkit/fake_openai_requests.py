"""Request validation for the fake OpenAI upstream: refuse what OpenAI refuses, with OpenAI's errors.

Pure functions from a parsed body to the parameters an endpoint needs; each raises RequestError
(an OpenAI-shaped error with its HTTP status) for a request the real API would reject.
"""

from __future__ import annotations

import json
from typing import Any

from openai_policy_devkit import fake_openai_payloads as payloads

BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)


class RequestError(Exception):
    """A request OpenAI would refuse: becomes an OpenAI-shaped error response."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = payloads.error_body(message, type_, param, code)


def missing(param: str) -> RequestError:
    return RequestError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise RequestError(400, BAD_JSON) from None
    if not isinstance(body, dict):
        raise RequestError(400, "Invalid request body: expected a JSON object.")
    return body


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None or model == "":
        raise RequestError(400, "you must provide a model parameter")
    if not isinstance(model, str):
        raise RequestError(400, "Invalid type for 'model': expected a string.", "model", "invalid_type")
    return model


def _integer(body: dict[str, Any], name: str, minimum: int, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(400, f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < minimum:
        raise RequestError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    if maximum is not None and value > maximum:
        raise RequestError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, "
            f"but got {value} instead.",
            name,
            "integer_above_max_value",
        )
    return value


def chat_params(body: dict[str, Any]) -> tuple[int | None, int]:
    """(output token cap, n) of a chat completion request."""
    require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RequestError(
            400, "Invalid type for 'messages': expected an array of objects.", "messages", "invalid_type"
        )
    if not messages:
        raise RequestError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "messages",
            "empty_array",
        )
    limit = _integer(body, "max_completion_tokens", 1)
    if limit is None:
        limit = _integer(body, "max_tokens", 1)
    return limit, _integer(body, "n", 1, 128) or 1


def responses_params(body: dict[str, Any]) -> int | None:
    """The output token cap of a Responses request (OpenAI's minimum is 16)."""
    require_model(body)
    if "input" in body and not isinstance(body["input"], (str, list)):
        raise RequestError(
            400, "Invalid type for 'input': expected a string or an array.", "input", "invalid_type"
        )
    return _integer(body, "max_output_tokens", 16)


def completions_params(body: dict[str, Any]) -> int:
    """The output token cap of a legacy completion (OpenAI's default is 16)."""
    require_model(body)
    if body.get("stream") is True:
        raise RequestError(400, "The fake does not stream legacy completions.", "stream")
    limit = _integer(body, "max_tokens", 0)
    return 16 if limit is None else limit


def embeddings_params(body: dict[str, Any]) -> tuple[list[Any], str, int | None]:
    """(inputs, encoding_format, dimensions) of an embeddings request."""
    require_model(body)
    if "input" not in body:
        raise missing("input")
    value = body["input"]
    one_token_list = isinstance(value, list) and value and all(isinstance(v, int) for v in value)
    inputs = [value] if isinstance(value, str) or one_token_list else value
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'$.input' is invalid. Please check the API reference.", "input")
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise RequestError(
            400,
            f"Invalid value for 'encoding_format': {encoding_format!r}.",
            "encoding_format",
            "invalid_value",
        )
    return inputs, encoding_format, _integer(body, "dimensions", 1)


def moderation_params(body: dict[str, Any]) -> tuple[str, list[str]]:
    """(model, texts) of a moderation request."""
    if "input" not in body:
        raise missing("input")
    return str(body.get("model") or "omni-moderation-latest"), payloads.moderation_texts(body["input"])
