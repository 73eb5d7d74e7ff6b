"""The sidecar's request path, one stage per module, in the order ``proxy.Proxy`` runs them:

parse → suspend → model_choice → clamp → input_limit → safety → rate_and_budget → cache →
queue → forward → stream_relay or reply → settle → record.

The calling convention. A stage is a plain function (``async`` when it does I/O) that takes the
``RequestContext`` first, when it has something to record, and then only what it needs: a
sub-spec of the policy, a piece of the ``PolicySnapshot`` (prices, ledger, limiter) or of the
``DurableState`` (queue, breakers, cache, moderation client); never the ``Proxy``. It writes
what it learned into its own record of the context (``ctx.request``, ``ctx.model``,
``ctx.budget``, ``ctx.outcome``, ``ctx.upstream``, ``ctx.cache``, ``ctx.findings``), returns
what a later stage needs, and refuses by raising ``refusals.Refusal``: through ``ctx.enforce``
for a verdict of the policy (in dryRun it is only remembered), directly for what no mode lets
through (a malformed body, the kill switch, an upstream that did not answer). Each module keeps
the pure decision its stage is built on (``choose_model``, ``clamp_output``,
``check_input_tokens``, ``refusal_for_decision``, ...) so that tests can call either.
"""
