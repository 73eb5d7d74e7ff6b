"""The OpenAIPolicy operator: CRD reconciliation, sidecar injection and live status."""
