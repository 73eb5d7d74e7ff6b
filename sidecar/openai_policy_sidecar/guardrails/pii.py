"""PII detection and redaction: e-mail, phone, US SSN, payment cards, IP addresses, pasted API keys.

The seeds' three regexes are the starting point; each is tightened where measurement on
``tests/data/pii_labelled.jsonl`` showed false positives, and validated where a check exists:

- e-mail: the seeds' pattern (with its ``[A-Z|a-z]`` typo fixed), minus image names like
  ``icon@2x.png`` whose "TLD" is a file extension;
- SSN: the seeds' ``\\d{3}-?\\d{2}-?\\d{4}`` fires on every 9-digit number, so a bare 9-digit run
  counts only after an SSN keyword; separated forms need one consistent separator, and the SSA's
  never-issued numbers (area 000, 666, 900-999; group 00; serial 0000) are skipped;
- payment cards: 13-19 digits with one consistent separator, an issuer prefix that fits the
  length (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay) and the Luhn checksum — which
  spares most order numbers: a random 16-digit number passes Luhn one time in ten;
- phone: North American numbers written with separators or parentheses (area code and exchange
  starting 2-9), and international numbers written with a leading ``+`` (8-15 digits). A bare
  digit run is not a phone number here: it is far more often an id;
- IP addresses: IPv4 and IPv6, validated by :mod:`ipaddress`; loopback and unspecified
  addresses (``127.0.0.1``, ``::1``, ``0.0.0.0``) are not personal data, and a dotted quad after
  "version"/"v"/"chapter"/"section"... is a version or document number;
- API keys: ``sk-`` keys (legacy, ``sk-proj-``, ``sk-svcacct-``, ``sk-admin-``) with a tail of 20+
  key characters containing both letters and digits, so the seeds' own placeholder
  ``sk-proj-your-actual-key-here`` is not mistaken for a key.

When matches overlap, the more specific type wins (an e-mail's digits are not a phone number).
Redaction replaces each match with a typed placeholder such as ``[REDACTED_EMAIL]``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .text_extraction import TextSlot, rewrite_texts

# Type names as in the policy (``spec.safety.pii.types``), most specific first (overlap priority).
PII_TYPES: tuple[str, ...] = ("apiKey", "email", "creditCard", "ssn", "ipAddress", "phone")

PLACEHOLDERS: dict[str, str] = {
    "apiKey": "[REDACTED_API_KEY]",
    "email": "[REDACTED_EMAIL]",
    "creditCard": "[REDACTED_CREDIT_CARD]",
    "ssn": "[REDACTED_SSN]",
    "ipAddress": "[REDACTED_IP_ADDRESS]",
    "phone": "[REDACTED_PHONE]",
}


class PiiSpecLike(Protocol):
    """The attributes of ``spec.safety.pii`` this module reads (read-only, so that the policy
    model's ``Literal`` fields fit)."""

    @property
    def action(self) -> str: ...  # off | flag | redact | block

    @property
    def types(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class PiiMatch:
    type: str
    start: int
    end: int
    value: str


# -- patterns ----------------------------------------------------------------------------------

# An apostrophe is allowed inside the local part (o'brien@...), never at its edges (quotes).
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+(?:'[A-Za-z0-9._%+-]+)*@[A-Za-z0-9.-]+\.([A-Za-z]{2,})\b")
_FILE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "avif"}
)

_SSN_SEPARATED = re.compile(r"(?<![\w.-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-]|\.\d)")
_SSN_BARE = re.compile(r"(?<![\w.-])(\d{3})(\d{2})(\d{4})(?![\w-]|\.\d)")
_SSN_CONTEXT = re.compile(r"\b(?:ssn|ss#|ss\s*no|social\s+security|soc\.?\s*sec)", re.IGNORECASE)
_SSN_CONTEXT_WINDOW = 40  # characters before a bare 9-digit run that may hold the keyword

_CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\d)")

_NANP = re.compile(
    r"(?<![\w+.-])(?:\+?1[ .-]?)?(?:\(([2-9]\d{2})\)[ .-]?|([2-9]\d{2})([ .-]))([2-9]\d{2})[ .-](\d{4})(?![\w-]|\.\d)"
)
# Digit groups must be delimited (a separator, or a closing parenthesis) so that a digit run can
# be split only one way: an optional separator here made "+" and 40 digits take seconds.
_INTERNATIONAL = re.compile(
    r"(?<![\w+])\+(?:[1-9]\d{6,14}|[1-9]\d{0,3}(?:[ .-]?\(\d{1,5}\)|[ .-]\d{1,8}|(?<=\))\d{1,8}){1,6})(?![\w-]|\.\d)"
)

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:)(?![\w:])")
# Dotted quads that are version or document numbers, not addresses.
_VERSION_CONTEXT = re.compile(
    r"(?:\bversion|\bver\.?|\brelease|\bbuild|\bv|\bchapter|\bsection|\bsec\.|§|\bclause|\bstep|\bfigure|\btable)\s*$",
    re.IGNORECASE,
)

_API_KEY = re.compile(r"(?<![\w-])sk-(?:proj-|svcacct-|admin-)?([A-Za-z0-9_-]{20,})")


# -- validators --------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum of a payment card number."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _issuer_fits(digits: str) -> bool:
    """An issuer identification prefix that exists for this length."""
    n = len(digits)
    two, four, six = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16  # Mastercard
    if two in (34, 37):
        return n == 15  # American Express
    if four == 6011 or 644 <= int(digits[:3]) <= 649 or two == 65 or 622126 <= six <= 622925:
        return 16 <= n <= 19  # Discover
    if 300 <= int(digits[:3]) <= 305 or two in (36, 38, 39):
        return 14 <= n <= 19  # Diners Club
    if 3528 <= four <= 3589:
        return 16 <= n <= 19  # JCB
    if two == 62:
        return 16 <= n <= 19  # UnionPay
    return False


def _one_separator(text: str) -> bool:
    return len({char for char in text if not char.isdigit()}) <= 1


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    return area != "000" and area != "666" and not area.startswith("9") and group != "00" and serial != "0000"


def _email(text: str) -> list[PiiMatch]:
    return [
        PiiMatch("email", m.start(), m.end(), m.group())
        for m in _EMAIL.finditer(text)
        if m.group(1).lower() not in _FILE_EXTENSIONS
    ]


def _ssn(text: str) -> list[PiiMatch]:
    found = [
        PiiMatch("ssn", m.start(), m.end(), m.group())
        for m in _SSN_SEPARATED.finditer(text)
        if _ssn_valid(m.group(1), m.group(3), m.group(4))
    ]
    for m in _SSN_BARE.finditer(text):
        window = text[max(0, m.start() - _SSN_CONTEXT_WINDOW) : m.start()]
        if _ssn_valid(*m.groups()) and _SSN_CONTEXT.search(window):
            found.append(PiiMatch("ssn", m.start(), m.end(), m.group()))
    return found


def _credit_card(text: str) -> list[PiiMatch]:
    found = []
    for m in _CARD.finditer(text):
        value = m.group()
        digits = re.sub(r"\D", "", value)
        if _one_separator(value) and 13 <= len(digits) <= 19 and _issuer_fits(digits) and luhn_valid(digits):
            found.append(PiiMatch("creditCard", m.start(), m.end(), value))
    return found


def _phone(text: str) -> list[PiiMatch]:
    found = []
    for m in _NANP.finditer(text):
        found.append(PiiMatch("phone", m.start(), m.end(), m.group()))
    for m in _INTERNATIONAL.finditer(text):
        value = m.group().rstrip(" .-")
        digits = sum(char.isdigit() for char in value)
        if 8 <= digits <= 15 and value.count("(") == value.count(")"):
            found.append(PiiMatch("phone", m.start(), m.start() + len(value), value))
    return found


def _ip_address(text: str) -> list[PiiMatch]:
    found = []
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            value = m.group()
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                continue
            if address.is_loopback or address.is_unspecified:
                continue
            if address.version == 6 and sum(1 for group in value.split(":") if group) < 2:
                continue  # "a::b"-like fragments of prose or code
            if address.version == 4 and _VERSION_CONTEXT.search(text[max(0, m.start() - 16) : m.start()]):
                continue
            found.append(PiiMatch("ipAddress", m.start(), m.end(), value))
    return found


def _api_key(text: str) -> list[PiiMatch]:
    found = []
    for m in _API_KEY.finditer(text):
        tail = m.group(1)
        if any(c.isdigit() for c in tail) and any(c.isalpha() for c in tail):
            found.append(PiiMatch("apiKey", m.start(), m.end(), m.group()))
    return found


_DETECTORS = {
    "apiKey": _api_key,
    "email": _email,
    "creditCard": _credit_card,
    "ssn": _ssn,
    "ipAddress": _ip_address,
    "phone": _phone,
}


def find_pii(text: str, types: Collection[str] | None = None) -> list[PiiMatch]:
    """Non-overlapping matches in ``text`` (of ``types``; default all), in text order."""
    wanted = [t for t in PII_TYPES if types is None or t in types]
    accepted: list[PiiMatch] = []
    for kind in wanted:  # priority order: a more specific match claims its characters first
        for match in _DETECTORS[kind](text):
            if all(match.end <= other.start or match.start >= other.end for other in accepted):
                accepted.append(match)
    return sorted(accepted, key=lambda m: m.start)


def redact_text(text: str, types: Collection[str] | None = None) -> tuple[str, list[PiiMatch]]:
    """``text`` with each match replaced by its typed placeholder, and the matches."""
    matches = find_pii(text, types)
    if not matches:
        return text, matches
    pieces, cursor = [], 0
    for match in matches:
        pieces.append(text[cursor : match.start])
        pieces.append(PLACEHOLDERS[match.type])
        cursor = match.end
    pieces.append(text[cursor:])
    return "".join(pieces), matches


# -- the stage ---------------------------------------------------------------------------------


class PiiDetected(Exception):
    """Refusal (maps to ``pii_detected``, 400; retrying cannot help: ``x-should-retry: false``)."""

    code = "pii_detected"
    status = 400
    error_type = "invalid_request_error"
    retryable = False

    def __init__(self, counts: dict[str, int], paths: list[str]) -> None:
        kinds = ", ".join(f"{kind} x{count}" for kind, count in sorted(counts.items()))
        where = ", ".join(paths[:5]) + (", ..." if len(paths) > 5 else "")
        # Never echo the personal data itself: only its kind and where it was.
        super().__init__(f"The request contains personal data ({kinds}) in {where}; this policy blocks it.")
        self.counts = counts
        self.paths = paths
        self.param = paths[0] if paths else None


@dataclass
class PiiOutcome:
    """What the PII stage found and did. ``counts`` is per type; ``paths`` where PII was found."""

    action: str
    counts: dict[str, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    redacted: int = 0  # texts rewritten

    @property
    def found(self) -> bool:
        return bool(self.counts)

    @property
    def blocked(self) -> bool:
        """The policy refuses this request (the proxy raises ``exception()`` unless in dry-run)."""
        return self.action == "block" and self.found

    @property
    def flagged(self) -> bool:
        return self.found and self.action in ("flag", "redact", "block")

    def exception(self) -> PiiDetected:
        return PiiDetected(dict(self.counts), list(self.paths))


def check_pii(endpoint: str, body: dict[str, Any], spec: PiiSpecLike, *, dry_run: bool = False) -> PiiOutcome:
    """Scan every text of the request; with ``redact`` (and not ``dry_run``) rewrite ``body`` in place.

    Every role is scanned, the system prompt included: personal data sent to the provider is
    sent whoever wrote it. Never raises; see :attr:`PiiOutcome.blocked`.
    """
    outcome = PiiOutcome(action=spec.action)
    if spec.action == "off":
        return outcome
    types = tuple(spec.types)
    rewrite = spec.action == "redact" and not dry_run

    def visit(slot: TextSlot) -> str:
        new, matches = redact_text(slot.text, types)
        if matches:
            outcome.paths.append(slot.path)
            for match in matches:
                outcome.counts[match.type] = outcome.counts.get(match.type, 0) + 1
        return new if rewrite else slot.text

    outcome.redacted = rewrite_texts(endpoint, body, visit)
    return outcome
