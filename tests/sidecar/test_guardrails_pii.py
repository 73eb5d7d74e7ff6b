"""PII detectors, redaction and the stage over request bodies."""

from __future__ import annotations

import copy

import pytest

from openai_policy_api.spec import PiiSpec
from openai_policy_sidecar.guardrails.pii import (
    PII_TYPES,
    PLACEHOLDERS,
    check_pii,
    find_pii,
    luhn_valid,
    redact_text,
)


class Spec:
    def __init__(self, action: str, types=PII_TYPES) -> None:
        self.action = action
        self.types = list(types)


def kinds(text: str, types=None) -> list[str]:
    return [m.type for m in find_pii(text, types)]


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("41x1") and not luhn_valid("")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("mail a.b@example.com now", ["email"]),
        ("'quoted@x.com'", ["email"]),
        ("icon@2x.png", []),
        ("SSN 123-45-6789", ["ssn"]),
        ("SSN 123 45 6789", ["ssn"]),
        ("123-45 6789", []),  # mixed separators
        ("000-12-3456 666-12-3456 912-34-5678 123-00-4567 123-45-0000", []),  # never issued
        ("order 123456789", []),  # bare 9 digits without an SSN keyword
        ("my ssn: 123456789", ["ssn"]),
        ("4111 1111 1111 1111", ["creditCard"]),
        ("4111-1111-1111-1111", ["creditCard"]),
        ("4111 1111-1111 1111", []),  # mixed separators: not a card as written
        ("4111 1111 1111 1112", []),  # Luhn fails
        ("1029384756102938", []),  # passes Luhn, but no issuer starts with 10
        ("(415) 555-2671", ["phone"]),
        ("+1 415 555 2671", ["phone"]),
        ("+44 20 7946 0958", ["phone"]),
        ("415-055-2671", []),  # exchange cannot start with 0
        ("4155552671", []),  # bare digits: ids more often than phones
        ("2024-03-15", []),
        ("ip 203.0.113.9.", ["ipAddress"]),
        ("127.0.0.1 and ::1 and 0.0.0.0", []),
        ("version 1.2.3.4", []),
        ("999.1.1.1", []),
        ("fe80::1ff:fe23:4567:890a", ["ipAddress"]),
        ("sk-proj-Abc123DEF456ghi789JKL012", ["apiKey"]),
        ("sk-proj-your-actual-key-here", []),
        ("ask-me-anything-1234567890abcdefg", []),
    ],
)
def test_detectors(text, expected):
    assert kinds(text) == expected


def test_overlaps_resolved_by_specificity_and_type_filter():
    text = "reach me: bob.415.555.2671@example.com"
    assert kinds(text) == ["email"]
    assert kinds("SSN 123-45-6789, mail x@y.io", types=["email"]) == ["email"]
    assert kinds("card 4111111111111111", types=["phone"]) == []


def test_redact_uses_typed_placeholders():
    text = "Mail jo@example.com, card 4111 1111 1111 1111, SSN 123-45-6789, call (415) 555-2671, ip 8.8.4.4, key sk-abcdef0123456789ABCDEF."
    redacted, matches = redact_text(text)
    assert redacted == (
        "Mail [REDACTED_EMAIL], card [REDACTED_CREDIT_CARD], SSN [REDACTED_SSN], call [REDACTED_PHONE], "
        "ip [REDACTED_IP_ADDRESS], key [REDACTED_API_KEY]."
    )
    assert [m.type for m in matches] == ["email", "creditCard", "ssn", "phone", "ipAddress", "apiKey"]
    assert set(PLACEHOLDERS) == set(PII_TYPES)
    assert redact_text("nothing here") == ("nothing here", [])


def body():
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Support bot. Escalations: ops@corp.example"},
            {"role": "user", "content": [{"type": "text", "text": "my card is 4111 1111 1111 1111"}]},
        ],
    }


def test_stage_redact_rewrites_every_role():
    b = body()
    outcome = check_pii("chat.completions", b, Spec("redact"))
    assert outcome.found and outcome.flagged and not outcome.blocked and outcome.redacted == 2
    assert outcome.counts == {"email": 1, "creditCard": 1}
    assert b["messages"][0]["content"] == "Support bot. Escalations: [REDACTED_EMAIL]"
    assert b["messages"][1]["content"][0]["text"] == "my card is [REDACTED_CREDIT_CARD]"


def test_stage_block_and_flag_leave_the_body_alone():
    for action in ("block", "flag"):
        b = body()
        outcome = check_pii("chat.completions", b, Spec(action))
        assert b == body() and outcome.found and outcome.blocked is (action == "block")
    exc = check_pii("chat.completions", body(), Spec("block")).exception()
    assert exc.code == "pii_detected" and exc.status == 400 and exc.param == "messages[0].content"
    assert "4111" not in str(exc) and "ops@" not in str(exc)  # never echo the data
    assert "creditCard x1" in str(exc)


def test_stage_dry_run_redact_reports_without_rewriting():
    b = body()
    outcome = check_pii("chat.completions", b, Spec("redact"), dry_run=True)
    assert b == body() and outcome.counts == {"email": 1, "creditCard": 1} and outcome.redacted == 0


def test_stage_off_and_types_from_the_policy_model():
    b = body()
    assert not check_pii("chat.completions", b, PiiSpec()).found  # default action off
    outcome = check_pii("chat.completions", b, PiiSpec(action="redact", types=["email"]))
    assert outcome.counts == {"email": 1} and "4111 1111" in b["messages"][1]["content"][0]["text"]


@pytest.mark.parametrize(
    "endpoint,request_body,path",
    [
        ("responses", {"input": "ssn 123-45-6789"}, ("input",)),
        (
            "responses",
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "ssn 123-45-6789"}]}]},
            ("input", 0, "content", 0, "text"),
        ),
        ("responses", {"instructions": "ssn 123-45-6789", "input": "hi"}, ("instructions",)),
        ("completions", {"prompt": ["ok", "ssn 123-45-6789"]}, ("prompt", 1)),
        ("embeddings", {"input": "ssn 123-45-6789"}, ("input",)),
    ],
)
def test_stage_works_on_every_endpoint(endpoint, request_body, path):
    b = copy.deepcopy(request_body)
    outcome = check_pii(endpoint, b, Spec("redact"))
    value = b
    for key in path:
        value = value[key]
    assert outcome.counts == {"ssn": 1} and value == "ssn [REDACTED_SSN]"


@pytest.mark.parametrize(
    "text",
    [
        ("+" + "1" * 40 + " ") * 2000,  # took 11 s before the international pattern was made unambiguous
        "1234 " * 20000,
        ("a." * 50000) + "@",
        "1:" * 50000,
        "9" * 100000,
        "12-" * 30000,
        "The quick brown fox jumps over the lazy dog. " * 5000,
    ],
)
def test_no_catastrophic_backtracking_on_100kb_inputs(text):
    import time

    started = time.perf_counter()
    find_pii(text)
    assert time.perf_counter() - started < 1.0
