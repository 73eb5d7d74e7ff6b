"""Precision and recall of the PII detector per type on a small labelled set.

The set (tests/data/pii_labelled.jsonl) holds true PII of every type and near-misses that
trip naive patterns: order and tracking numbers, ISBNs, dates, version strings, UUIDs, hashes,
phone-like product codes, image names with '@', placeholders that look like keys. It also keeps
cases the detector is known to miss (obfuscated e-mail, a bare 10-digit phone number, a UK number
without +44), so recall is not flattered.

Rows without a "split" were written first and used while developing the patterns (two rules
came from them: apostrophes inside e-mail local parts, section numbers that look like IPv4).
Rows marked "split": "holdout" were written afterwards and measured without any change to the
detector; the one error found there (a firmware version "4.18.205.3" read as an IPv4 address)
is kept as a known limitation: without a keyword before it, a dotted quad is an address.

Scoring is per entity: a labelled entity is found when a prediction of the same type overlaps it;
a prediction that overlaps no labelled entity of its type is a false positive.
Print the table:  .venv/bin/python -m tests.sidecar.test_guardrails_pii_labelled
"""

from __future__ import annotations

import json
from pathlib import Path

from openai_policy_sidecar.guardrails.pii import PII_TYPES, find_pii

DATA = Path(__file__).resolve().parents[1] / "data" / "pii_labelled.jsonl"

# Floors per type, set just under what the detector measures today (see the table) so that a
# regression fails the build, while the known, documented misses do not:
# - phone recall: 2 of 10 labelled phones are written in forms the detector deliberately does
#   not read (a bare 10-digit run, a UK national number without +44), because bare digit runs
#   are far more often ids; the floor admits those two and nothing more.
# - email recall: the obfuscated "john at example dot com" is a known miss.
# - ipAddress precision: the holdout's firmware version (see above) is a known false positive.
PRECISION_FLOOR = {
    "email": 0.95,
    "phone": 0.95,
    "ssn": 0.95,
    "creditCard": 0.95,
    "ipAddress": 0.8,
    "apiKey": 0.95,
}
RECALL_FLOOR = {
    "email": 0.85,
    "phone": 0.75,
    "ssn": 0.95,
    "creditCard": 0.95,
    "ipAddress": 0.95,
    "apiKey": 0.95,
}


def _load() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def evaluate(split: str | None = None) -> dict[str, dict[str, float]]:
    """Per-type counts and ratios over the rows of ``split`` ("dev", "holdout"; None: all)."""
    counts = {t: {"tp": 0, "fp": 0, "fn": 0} for t in PII_TYPES}
    for row in _load():
        if split is not None and row.get("split", "dev") != split:
            continue
        text = row["text"]
        labels = []
        for entity in row["pii"]:
            start = text.find(entity["value"])
            assert start >= 0, f"label {entity['value']!r} not in {text!r}"
            labels.append((entity["type"], (start, start + len(entity["value"]))))
        predictions = [(m.type, (m.start, m.end)) for m in find_pii(text)]
        for kind, span in labels:
            hit = any(p_kind == kind and _overlaps(span, p_span) for p_kind, p_span in predictions)
            counts[kind]["tp" if hit else "fn"] += 1
        for kind, span in predictions:
            if not any(l_kind == kind and _overlaps(span, l_span) for l_kind, l_span in labels):
                counts[kind]["fp"] += 1
    table = {}
    for kind, c in counts.items():
        predicted, actual = c["tp"] + c["fp"], c["tp"] + c["fn"]
        table[kind] = {
            **c,
            "precision": c["tp"] / predicted if predicted else 1.0,
            "recall": c["tp"] / actual if actual else 1.0,
        }
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'type':<10} {'tp':>3} {'fp':>3} {'fn':>3} {'precision':>9} {'recall':>7}"]
    for kind, r in table.items():
        lines.append(
            f"{kind:<10} {r['tp']:>3} {r['fp']:>3} {r['fn']:>3} {r['precision']:>9.3f} {r['recall']:>7.3f}"
        )
    return "\n".join(lines)


def test_labelled_set_is_big_and_covers_every_type():
    rows = _load()
    assert len(rows) >= 60
    types = {entity["type"] for row in rows for entity in row["pii"]}
    assert types == set(PII_TYPES)
    assert sum(1 for row in rows if not row["pii"]) >= 30  # near-misses


def test_precision_and_recall_per_type():
    for split in ("dev", "holdout"):
        print(f"\n[{split}]\n" + format_table(evaluate(split)))
    table = evaluate()
    print("\n[all]\n" + format_table(table))
    for kind, r in table.items():
        assert r["precision"] >= PRECISION_FLOOR[kind], (kind, r)
        assert r["recall"] >= RECALL_FLOOR[kind], (kind, r)


if __name__ == "__main__":
    for name in ("dev", "holdout", None):
        print(f"[{name or 'all'}]\n{format_table(evaluate(name))}\n")
