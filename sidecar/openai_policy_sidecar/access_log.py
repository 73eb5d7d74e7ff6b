"""One JSON line per request, and a guard that keeps secrets out of every log line.

Prompts are never logged unless ``logging.prompts`` is on. The ``SecretRedactor`` filter is
defence in depth: nothing in the sidecar logs the key, but should any library ever do so, the
line is redacted before it is written.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from .fast_json import dumps_line

ACCESS_LOGGER = "openai_policy_sidecar.access"
REDACTED = "[REDACTED]"


class SecretRedactor(logging.Filter):
    """Replaces every current secret (the key, old and new) in a record's final message."""

    def __init__(self, secrets: Callable[[], list[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [s for s in self._secrets() if s]
        if not secrets:
            return True
        message = record.getMessage()
        cleaned = message
        for secret in secrets:
            cleaned = cleaned.replace(secret, REDACTED)
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if any(secret in text for secret in secrets):
                record.exc_info = None
                record.exc_text = None
                cleaned += " (exception detail redacted)"
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """Access lines are already JSON; other records become {"time","level","logger","message"}."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER:
            return record.getMessage()
        line: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return dumps_line(line)


def configure_logging(secrets: Callable[[], list[str]], level: int = logging.INFO) -> None:
    """Send every log record, as JSON, to stderr through the redactor."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretRedactor(secrets))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    use_writer(AccessLogWriter(sys.stderr, secrets))


class AccessLogWriter:
    """Writes access lines to a stream in small batches (at most ``interval`` seconds late).

    One write system call per request was a tenth of the sidecar's own latency; batching keeps
    the lines in order and complete while making the cost per request a string append. Lines
    are redacted like every other log record.
    """

    def __init__(
        self,
        stream: IO[str],
        secrets: Callable[[], list[str]],
        interval: float = 0.05,
        max_pending: int = 256,
    ) -> None:
        self.stream = stream
        self.secrets = secrets
        self.interval = interval
        self.max_pending = max_pending
        self._pending: list[str] = []
        self._scheduled = False

    def write(self, line: str) -> None:
        for secret in self.secrets():
            if secret and secret in line:
                line = line.replace(secret, REDACTED)
        self._pending.append(line)
        if len(self._pending) >= self.max_pending:
            self.flush()
            return
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        text, self._pending = "\n".join(self._pending) + "\n", []
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed at shutdown: nothing better to do
            pass


_writer: AccessLogWriter | None = None


def use_writer(writer: AccessLogWriter | None) -> None:
    global _writer
    if _writer is not None:
        _writer.flush()
    _writer = writer


def flush() -> None:
    if _writer is not None:
        _writer.flush()


def write_access_line(fields: dict[str, Any]) -> None:
    fields.setdefault("time", round(time.time(), 3))
    line = dumps_line(fields)
    if _writer is not None:
        _writer.write(line)
    else:  # embedded (tests, libraries): through logging, whatever handlers the host set up
        logging.getLogger(ACCESS_LOGGER).info(line)
