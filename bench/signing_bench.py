"""The cost of signed policy documents, per policy update: sign (operator) and parse + verify (sidecar).

    .venv/bin/python bench/signing_bench.py [POLICY_YAML]

Measured on the all-stages benchmark policy by default. A sidecar verifies once per distinct
document it reads (a new generation, a re-created policy, a forgery): not per request.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from openai_policy_api import load_policy
from openai_policy_store.signing import Signer, generate_seed_line, parse_public_keys, verify_document

HERE = Path(__file__).resolve().parent


def per_call_us(fn, rounds: int = 2000) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "policy-all-stages.yaml"
    document = load_policy(source.read_text()).to_document()
    document["metadata"].update(
        generation=2, uid="u", creationTimestamp="2026-01-01T00:00:00Z", signedAt=int(time.time() * 1000)
    )
    signer = Signer.from_text(generate_seed_line())
    trusted = parse_public_keys(signer.public_keys)
    signed = signer.sign(document)
    text = json.dumps(signed)
    print(f"document: {len(text)} bytes of JSON")
    print(f"sign (operator):                 {per_call_us(lambda: signer.sign(document)):8.1f} us")
    print(f"verify (sidecar, parsed):        {per_call_us(lambda: verify_document(signed, trusted)):8.1f} us")
    print(
        f"json.loads + verify (store):     {per_call_us(lambda: verify_document(json.loads(text), trusted)):8.1f} us"
    )
    yaml_text = yaml.safe_dump(signed)
    print(
        f"yaml.safe_load + verify (file):  "
        f"{per_call_us(lambda: verify_document(yaml.safe_load(yaml_text), trusted), 200):8.1f} us"
    )
    print(f"load_policy (for comparison):    {per_call_us(lambda: load_policy(document), 500):8.1f} us")


if __name__ == "__main__":
    main()
