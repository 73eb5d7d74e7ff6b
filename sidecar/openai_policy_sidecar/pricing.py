"""Model prices and the cost of a call, in integer micro-dollars.

A price is USD per million tokens, so ``tokens * price_per_million`` is already a number of
micro-dollars: costs are computed exactly in Decimal and rounded *up* to a whole micro-dollar
once per call. The bundled table (``data/prices.json``) is dated; a policy's ``spec.pricing``
overrides or extends it. A model with no price raises :class:`UnknownModelPrice`: the proxy
refuses such a call rather than let spend go unmetered.

Lookup order for a model id: the policy's overrides, then the bundled table; in each, the exact
id first, then the id with its version suffix removed (``gpt-4o-2024-08-06`` -> ``gpt-4o``,
``gpt-3.5-turbo-0125`` -> ``gpt-3.5-turbo``). So a policy that prices ``gpt-4o`` prices every
dated ``gpt-4o-*`` snapshot too, while the bundled table can still give one snapshot its own
price (``gpt-4o-2024-05-13``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from openai_policy_store.money import decimal_micros_ceil, to_decimal

if TYPE_CHECKING:  # the policy model imports nothing from here; avoid a cycle at import time
    from openai_policy_api import PolicySpec

# A trailing snapshot date: -2024-08-06 (current style) or -0125 / -1106 (older MMDD style).
_VERSION_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


class UnknownModelPrice(LookupError):
    """No price is known for this model: the call cannot be metered, so it must not be made."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model

    def __str__(self) -> str:
        return (
            f"no price is known for model {self.model!r}; add it under spec.pricing.models "
            "(inputPerMillion, outputPerMillion) to allow it"
        )


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``cached_input_per_million`` defaults to the input price."""

    model: str
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal

    @classmethod
    def from_values(
        cls,
        model: str,
        input_per_million: float | str | Decimal,
        output_per_million: float | str | Decimal,
        cached_input_per_million: float | str | Decimal | None = None,
    ) -> ModelPrice:
        inp = to_decimal(input_per_million)
        out = to_decimal(output_per_million)
        cached = inp if cached_input_per_million is None else to_decimal(cached_input_per_million)
        for label, value in (("input", inp), ("output", out), ("cached input", cached)):
            if value < 0:
                raise ValueError(f"{model}: {label} price must not be negative")
        return cls(
            model=model, input_per_million=inp, output_per_million=out, cached_input_per_million=cached
        )


def base_model_id(model: str) -> str | None:
    """The id without its snapshot suffix, or None when it has none."""
    base = _VERSION_SUFFIX.sub("", model)
    return base if base != model else None


class PriceTable:
    """Layers of ``{model id: ModelPrice}``, highest priority first (policy overrides, then bundled)."""

    def __init__(
        self,
        prices: Mapping[str, ModelPrice],
        *,
        as_of: str | None = None,
        source: str | None = None,
        overrides: Mapping[str, ModelPrice] | None = None,
    ) -> None:
        self.as_of = as_of
        self.source = source
        self._layers: tuple[Mapping[str, ModelPrice], ...] = (dict(overrides or {}), dict(prices))
        self._resolved: dict[str, ModelPrice] = {}

    @classmethod
    def bundled(cls) -> PriceTable:
        """The table shipped in ``data/prices.json`` (parsed once per process)."""
        return _bundled()

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> PriceTable:
        """Parse the ``prices.json`` shape: ``{"asOf", "source", "models": {id: {input, cachedInput?, output}}}``."""
        prices = {
            model: ModelPrice.from_values(model, entry["input"], entry["output"], entry.get("cachedInput"))
            for model, entry in document["models"].items()
        }
        return cls(prices, as_of=document.get("asOf"), source=document.get("source"))

    def with_overrides(self, overrides: Mapping[str, ModelPrice]) -> PriceTable:
        """This table's base prices with ``overrides`` layered on top (replacing earlier overrides)."""
        return PriceTable(self._layers[1], as_of=self.as_of, source=self.source, overrides=overrides)

    @classmethod
    def for_policy(cls, spec: PolicySpec) -> PriceTable:
        """The bundled table plus ``spec.pricing.models`` overrides."""
        overrides: dict[str, ModelPrice] = {}
        pricing = getattr(spec, "pricing", None)
        models = getattr(pricing, "models", None) or {}
        for model, entry in models.items():
            overrides[model] = ModelPrice.from_values(
                model,
                entry.input_per_million,
                entry.output_per_million,
                getattr(entry, "cached_input_per_million", None),
            )
        base = cls.bundled()
        return base.with_overrides(overrides) if overrides else base

    def price(self, model: str) -> ModelPrice:
        """The price of ``model``; raises :class:`UnknownModelPrice`."""
        found = self._resolved.get(model)
        if found is not None:
            return found
        base = base_model_id(model)
        for layer in self._layers:
            found = layer.get(model)
            if found is None and base is not None:
                found = layer.get(base)
            if found is not None:
                if len(self._resolved) < 4096:  # bounded: model ids come from requests
                    self._resolved[model] = found
                return found
        raise UnknownModelPrice(model)

    def knows(self, model: str) -> bool:
        try:
            self.price(model)
        except UnknownModelPrice:
            return False
        return True

    def models(self) -> list[str]:
        """Every model id with an explicit entry (overrides and bundled)."""
        return sorted({model for layer in self._layers for model in layer})

    def cost_micros(
        self, model: str, input_tokens: int, cached_input_tokens: int = 0, output_tokens: int = 0
    ) -> int:
        """Cost of one call in micro-dollars, rounded up.

        ``input_tokens`` is the total input as OpenAI reports it (``prompt_tokens`` /
        ``input_tokens``), *including* the cached ones; ``cached_input_tokens`` (from
        ``*_tokens_details.cached_tokens``) is the part billed at the cached rate. Output tokens
        include reasoning tokens, as OpenAI bills them.
        """
        price = self.price(model)
        for label, value in (
            ("input", input_tokens),
            ("cached", cached_input_tokens),
            ("output", output_tokens),
        ):
            if value < 0:
                raise ValueError(f"{label} token count must not be negative")
        cached = min(cached_input_tokens, input_tokens)
        total = (
            (input_tokens - cached) * price.input_per_million
            + cached * price.cached_input_per_million
            + output_tokens * price.output_per_million
        )
        return decimal_micros_ceil(total)

    def worst_case_micros(self, model: str, input_tokens: int, max_output_tokens: int) -> int:
        """The most a call can cost: all input uncached, and every allowed output token used."""
        return self.cost_micros(model, input_tokens, 0, max_output_tokens)


@lru_cache(maxsize=1)
def _bundled() -> PriceTable:
    text = resources.files("openai_policy_sidecar").joinpath("data/prices.json").read_text(encoding="utf-8")
    return PriceTable.from_document(json.loads(text))
