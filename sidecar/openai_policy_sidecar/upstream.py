"""The one pooled HTTP client to the upstream API, and the headers it sends.

The caller's ``Authorization`` (a placeholder in a governed pod) is dropped and the real key is
injected here, the only place the key is put on the wire. Organization and project headers come
from the policy, never from the caller.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from .rate_headers import LastSeen
from .redaction import Redactor

# Hop-by-hop headers (RFC 9110 §7.6.1) and headers aiohttp computes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Headers the caller must not choose: credentials and the account they bill to, and ours.
_DROPPED_FROM_CALLER = frozenset(
    {
        "authorization",
        "openai-organization",
        "openai-project",
        "api-key",
        "x-openai-policy-user",
        "x-openai-policy-feature",
    }
)
# Upstream response headers an app may see. Anything else is dropped: an upstream (or a proxy in
# front of it) may add headers that echo credentials or describe the sidecar's own connection,
# and an allow-list cannot be surprised by a new one. Content-Length and Content-Encoding are not
# here because aiohttp computes them for the body the sidecar sends.
PASSED_FROM_UPSTREAM = frozenset(
    {
        "content-type",
        "content-disposition",
        "cache-control",
        "x-request-id",
        "openai-processing-ms",
        "openai-version",
        "openai-model",
        "openai-organization",
        "openai-project",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }
)


def upstream_headers(
    incoming: Mapping[str, str] | Iterable[tuple[str, str]],
    api_key: str,
    organization: str | None,
    project: str | None,
) -> CIMultiDict[str]:
    items = incoming.items() if isinstance(incoming, Mapping) else incoming
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _DROPPED_FROM_CALLER or lower == "accept-encoding":
            continue
        headers.add(name, value)
    headers["Authorization"] = f"Bearer {api_key}"
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    return headers


def downstream_headers(
    upstream: Mapping[str, str] | Iterable[tuple[str, str]], redactor: Redactor | None = None
) -> CIMultiDict[str]:
    """The allow-listed upstream response headers, with the key redacted from their values."""
    items = upstream.items() if isinstance(upstream, Mapping) else upstream
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        if name.lower() in PASSED_FROM_UPSTREAM:
            headers.add(name, redactor.text(value) if redactor else value)
    return headers


def join_url(base_url: str, path: str, query: str) -> str:
    """``base_url`` ends in /v1 (spec.upstream.baseURL); ``path`` starts with /v1."""
    base = base_url.rstrip("/")
    suffix = path[3:] if path.startswith("/v1/") and base.endswith("/v1") else path
    url = base + suffix
    return f"{url}?{query}" if query else url


# NO_PROXY alone (``proxy_bypass`` would also ask the OS on macOS and Windows); public in
# urllib.request but missing from typeshed.
_proxy_bypass_environment: Callable[[str], bool] = vars(urllib.request)["proxy_bypass_environment"]


@lru_cache(maxsize=64)
def proxy_for(url: str) -> str | None:
    """HTTP(S)_PROXY / NO_PROXY for an upstream origin, looked up once per origin.

    aiohttp's ``trust_env`` does this (and a ~/.netrc read) in a thread on every request, which
    cost more than the rest of the sidecar's work on a request.
    """
    parts = urlsplit(url)
    if parts.hostname and _proxy_bypass_environment(parts.hostname):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


class Upstream:
    """One pooled ``ClientSession`` for the life of the sidecar (keep-alive matters: seeds)."""

    def __init__(self, connection_limit: int = 0) -> None:
        # 0: no cap of the pool's own. The policy's queue (spec.queue.maxConcurrent) is what bounds
        # upstream calls; a fixed cap here was a hidden second limit (streams past 256 waited).
        self._limit = connection_limit
        self._session: aiohttp.ClientSession | None = None
        self.rate_view = LastSeen()  # the upstream's latest x-ratelimit-*, for answers it never sees

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30, ttl_dns_cache=300)
            # auto_decompress: we read usage from the body. Proxies from the environment: proxy_for().
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        body: bytes,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        origin = url.split("/", 3)
        return await self.session.request(
            method,
            url,
            headers=headers,
            data=body if body else None,
            timeout=timeout,
            allow_redirects=False,
            proxy=proxy_for("/".join(origin[:3])),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
