"""The OpenAIPolicy sidecar: an OpenAI-compatible proxy that meters and enforces a policy."""
