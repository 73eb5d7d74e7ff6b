"""Model prices and the cost of a call, in integer micro-dollars.

A price is USD per million tokens, so ``tokens * price_per_million`` is already a number of
micro-dollars: costs are computed exactly in Decimal and rounded *up* to a whole micro-dollar
once per call. The bundled table (``data/prices.json``) is dated; a policy's ``spec.pricing``
overrides or extends it. A model with no price raises :class:`UnknownModelPrice`: the proxy
refuses such a call rather than let spend go unmetered.

Besides text tokens a row may carry what other surfaces bill: image and audio tokens, a price
per image or per million characters or per minute of audio, rates per service tier, long-context
rates, a cache-write rate and the model's context window. Built-in tool fees of the Responses
API are per call, table-wide (``toolCalls``).

Lookup order for a model id: the policy's overrides, then the bundled table; in each, the exact
id first, then the id with its version suffix removed (``gpt-4o-2024-08-06`` -> ``gpt-4o``,
``gpt-3.5-turbo-0125`` -> ``gpt-3.5-turbo``). So a policy that prices ``gpt-4o`` prices every
dated ``gpt-4o-*`` snapshot too, while the bundled table can still give one snapshot its own
price (``gpt-4o-2024-05-13``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from openai_policy_api.spec import SERVICE_TIERS
from openai_policy_store.money import MICROS_PER_USD, decimal_micros_ceil, to_decimal

from .reported_usage import Usage

if TYPE_CHECKING:  # the policy model imports nothing from here; avoid a cycle at import time
    from openai_policy_api import PolicySpec

log = logging.getLogger("openai_policy_sidecar.pricing")

# A trailing snapshot date: -2024-08-06 (current style) or -0125 / -1106 (older MMDD style).
_VERSION_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_ZERO = Decimal(0)
_USD = Decimal(MICROS_PER_USD)

# The tool name under which a chat search model's per-search fee is billed: chat_search:<size>.
CHAT_SEARCH = "chat_search:"
# The service tiers a response may report, and the spellings that mean one of them.
TIERS = SERVICE_TIERS
_TIER_ALIASES = {"standard": "default", "fast": "priority"}
# A long-context tier applies above a threshold of *reported* input tokens; the sidecar's own
# count may be a little under what OpenAI counts, so the worst case takes the long rates from
# this fraction of the threshold on.
LONG_CONTEXT_MARGIN = Decimal("0.95")


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
class Rates:
    """USD per million tokens of each kind a call may bill."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    cache_write: Decimal
    image_input: Decimal
    cached_image_input: Decimal
    audio_input: Decimal
    audio_output: Decimal

    def scaled(self, factor: Decimal) -> Rates:
        return Rates(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def highest(self, other: Rates) -> Rates:
        return Rates(**{f.name: max(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    def with_values(self, document: Mapping[str, Any]) -> Rates:
        """These rates with the ones a JSON row names replaced; a rate the row leaves out that
        followed another (cached input, cache writes, image and audio tokens billed as text)
        follows that one's new value."""
        out = self
        for key, name in _RATE_KEYS.items():
            if key in document:
                out = replace(out, **{name: _price(document[key], key)})
        for name, source in _FOLLOWS:
            key = next(k for k, n in _RATE_KEYS.items() if n == name)
            if key not in document and getattr(self, name) == getattr(self, source):
                out = replace(out, **{name: getattr(out, source)})
        return out


_RATE_KEYS = {
    "input": "input",
    "cachedInput": "cached_input",
    "output": "output",
    "cacheWrite": "cache_write",
    "imageInput": "image_input",
    "cachedImageInput": "cached_image_input",
    "audioInput": "audio_input",
    "audioOutput": "audio_output",
}


# (rate, the rate it follows when a row does not set it)
_FOLLOWS = (
    ("cached_input", "input"),
    ("cache_write", "input"),
    ("image_input", "input"),
    ("cached_image_input", "cached_input"),
    ("audio_input", "input"),
    ("audio_output", "output"),
)


def _price(value: object, label: str) -> Decimal:
    if not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"{label} must be a decimal string")
    price = to_decimal(value)
    if price < 0:
        raise ValueError(f"{label} price must not be negative")
    return price


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``cached_input_per_million`` defaults to the input price."""

    model: str
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal
    context_window: int | None = None  # tokens; None: unknown (server-side input then unbounded)
    cache_write_per_million: Decimal | None = None  # None: billed at the input price
    # Image and audio tokens a row does not price separately are billed as text tokens (a chat
    # model's vision tokens are): None follows the input (cached input, output) price.
    image_input_per_million: Decimal | None = None
    cached_image_input_per_million: Decimal | None = None
    audio_input_per_million: Decimal | None = None
    audio_output_per_million: Decimal | None = None
    tiers: tuple[tuple[str, Rates], ...] = ()  # service tiers other than default
    long_context: tuple[int, Rates] | None = None  # (above this many input tokens, rates)
    per_image: tuple[tuple[str, Decimal], ...] = ()  # "quality:size" -> USD per image
    image_output_tokens: tuple[tuple[str, int], ...] = ()  # "quality:size" -> tokens per image
    max_image_input_tokens: int = 0  # the most one input image can count
    per_million_characters: Decimal | None = None  # speech billed per input character
    per_minute: Decimal | None = None  # audio billed per minute of input
    max_audio_output_tokens_per_character: int = 0  # speech: output audio tokens per input character
    search_per_call: tuple[
        tuple[str, Decimal], ...
    ] = ()  # chat search models: USD per search, by context size

    @classmethod
    def from_values(
        cls,
        model: str,
        input_per_million: float | str | Decimal,
        output_per_million: float | str | Decimal,
        cached_input_per_million: float | str | Decimal | None = None,
        **columns: Any,
    ) -> ModelPrice:
        inp = to_decimal(input_per_million)
        out = to_decimal(output_per_million)
        cached = inp if cached_input_per_million is None else to_decimal(cached_input_per_million)
        for label, value in (("input", inp), ("output", out), ("cached input", cached)):
            if value < 0:
                raise ValueError(f"{model}: {label} price must not be negative")
        return cls(
            model=model,
            input_per_million=inp,
            output_per_million=out,
            cached_input_per_million=cached,
            **columns,
        )

    @classmethod
    def from_row(cls, model: str, row: Mapping[str, Any]) -> ModelPrice:
        """One ``models`` entry of the ``prices.json`` shape."""
        base = cls.from_values(model, row["input"], row["output"], row.get("cachedInput"))
        columns: dict[str, Any] = {}
        if "contextWindow" in row:
            columns["context_window"] = _count(row["contextWindow"], f"{model}.contextWindow")
        for key, name in (
            ("cacheWrite", "cache_write_per_million"),
            ("imageInput", "image_input_per_million"),
            ("cachedImageInput", "cached_image_input_per_million"),
            ("audioInput", "audio_input_per_million"),
            ("audioOutput", "audio_output_per_million"),
            ("perMillionCharacters", "per_million_characters"),
            ("perMinute", "per_minute"),
        ):
            if key in row:
                columns[name] = _price(row[key], f"{model}.{key}")
        for key, name in (
            ("maxImageInputTokens", "max_image_input_tokens"),
            ("maxAudioOutputTokensPerCharacter", "max_audio_output_tokens_per_character"),
        ):
            if key in row:
                columns[name] = _count(row[key], f"{model}.{key}")
        if "perImage" in row:
            columns["per_image"] = tuple(
                (str(k), _price(v, f"{model}.perImage.{k}")) for k, v in sorted(row["perImage"].items())
            )
        if "searchPerCall" in row:
            columns["search_per_call"] = tuple(
                (str(k), _price(v, f"{model}.searchPerCall.{k}"))
                for k, v in sorted(row["searchPerCall"].items())
            )
        if "imageOutputTokens" in row:
            columns["image_output_tokens"] = tuple(
                (str(k), _count(v, f"{model}.imageOutputTokens.{k}"))
                for k, v in sorted(row["imageOutputTokens"].items())
            )
        priced = replace(base, **columns)
        rates = priced.rates
        tiers = []
        for tier, value in sorted((row.get("tiers") or {}).items()):
            tier = normal_tier(tier) or tier
            if isinstance(value, Mapping):
                tiers.append((tier, rates.with_values(value)))
            else:
                tiers.append((tier, rates.scaled(_price(value, f"{model}.tiers.{tier}"))))
        long = row.get("longContext")
        long_context = None
        if long is not None:
            long_context = (_count(long["aboveInputTokens"], f"{model}.longContext"), rates.with_values(long))
        return replace(priced, tiers=tuple(tiers), long_context=long_context)

    @property
    def rates(self) -> Rates:
        """The default tier's rates, short context."""

        def either(value: Decimal | None, default: Decimal) -> Decimal:
            return default if value is None else value

        image = either(self.image_input_per_million, self.input_per_million)
        return Rates(
            input=self.input_per_million,
            cached_input=self.cached_input_per_million,
            output=self.output_per_million,
            cache_write=either(self.cache_write_per_million, self.input_per_million),
            image_input=image,
            cached_image_input=either(
                self.cached_image_input_per_million,
                image if self.image_input_per_million is not None else self.cached_input_per_million,
            ),
            audio_input=either(self.audio_input_per_million, self.input_per_million),
            audio_output=either(self.audio_output_per_million, self.output_per_million),
        )

    def tier_names(self) -> list[str]:
        return ["default", *(name for name, _ in self.tiers)]

    def rates_for(self, tier: str | None, input_tokens: int) -> Rates:
        """The rates a call at ``tier`` (a normal tier name; None: not known) with this input pays.

        A tier the row does not list is the default tier's (OpenAI processes such a request at
        default); an unknown tier name costs the highest of the row's tiers."""
        base = self.rates
        if self.long_context is not None and input_tokens > self.long_context[0]:
            base = self.long_context[1]
        if tier is None or tier not in TIERS:
            return self._highest(base)
        for name, rates in self.tiers:
            if name == tier:
                return self._long(rates, base)
        return base

    def _long(self, tier_rates: Rates, base: Rates) -> Rates:
        """A tier's rates, scaled like the default tier's when the long-context rates apply."""
        if self.long_context is None or base is not self.long_context[1]:
            return tier_rates
        ratio = (tier_rates.input / self.input_per_million) if self.input_per_million else Decimal(1)
        return base.scaled(ratio)

    def _highest(self, base: Rates) -> Rates:
        out = base
        for _, rates in self.tiers:
            out = out.highest(self._long(rates, base))
        return out


def _count(value: object, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{label} must be a non-negative integer")
    return value


def normal_tier(tier: object) -> str | None:
    """A tier name as the table spells it; None for auto, absent or not a string."""
    if not isinstance(tier, str):
        return None
    tier = tier.strip().lower()
    tier = _TIER_ALIASES.get(tier, tier)
    return None if tier in ("", "auto") else tier


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
        tool_calls: Mapping[str, Decimal] | None = None,
        tool_overrides: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.as_of = as_of
        self.source = source
        self._layers: tuple[Mapping[str, ModelPrice], ...] = (dict(overrides or {}), dict(prices))
        self._tool_base = dict(tool_calls or {})
        self._tools = {**self._tool_base, **dict(tool_overrides or {})}
        self._resolved: dict[str, ModelPrice] = {}

    @classmethod
    def bundled(cls) -> PriceTable:
        """The table shipped in ``data/prices.json`` (parsed once per process)."""
        return _bundled()

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> PriceTable:
        """Parse the ``prices.json`` shape: ``{"asOf", "source", "toolCalls"?, "models": {id: row}}``."""
        prices = {model: ModelPrice.from_row(model, row) for model, row in document["models"].items()}
        tools = {
            name: _price(fee, f"toolCalls.{name}") for name, fee in (document.get("toolCalls") or {}).items()
        }
        return cls(prices, as_of=document.get("asOf"), source=document.get("source"), tool_calls=tools)

    def with_overrides(
        self, overrides: Mapping[str, ModelPrice], tool_overrides: Mapping[str, Decimal] | None = None
    ) -> PriceTable:
        """This table's base prices with ``overrides`` layered on top (replacing earlier overrides)."""
        return PriceTable(
            self._layers[1],
            as_of=self.as_of,
            source=self.source,
            overrides=overrides,
            tool_calls=self._tool_base,
            tool_overrides=tool_overrides,
        )

    @classmethod
    def for_policy(cls, spec: PolicySpec) -> PriceTable:
        """The bundled table plus ``spec.pricing`` overrides (models and tool fees)."""
        overrides: dict[str, ModelPrice] = {}
        pricing = getattr(spec, "pricing", None)
        models = getattr(pricing, "models", None) or {}
        base = cls.bundled()
        for model, entry in models.items():
            overrides[model] = override_price(model, entry, base.price(model) if base.knows(model) else None)
        tools = {name: to_decimal(fee) for name, fee in (getattr(pricing, "tool_calls", None) or {}).items()}
        return base.with_overrides(overrides, tools) if overrides or tools else base

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

    def context_window(self, model: str) -> int:
        """The model's context window in tokens: the most input a request can pull in from content
        the sidecar cannot see. Raises :class:`UnknownModelPrice` for an unpriced model, and
        ``LookupError`` for a priced one whose window is not known (the caller must refuse or ask
        the policy to state it with ``contextWindowTokens``)."""
        window = self.price(model).context_window
        if window is None:
            raise LookupError(
                f"the context window of model {model!r} is not known; set "
                f"spec.pricing.models.{model}.contextWindowTokens"
            )
        return window

    def tool_fee(self, tool: str) -> Decimal | None:
        """USD per call of a built-in tool; None when the table has no fee for it."""
        return self._tools.get(tool)

    def tools(self) -> dict[str, Decimal]:
        return dict(self._tools)

    def cost_micros(
        self, model: str, input_tokens: int, cached_input_tokens: int = 0, output_tokens: int = 0
    ) -> int:
        """Cost of one call in micro-dollars, rounded up, at the default tier.

        ``input_tokens`` is the total input as OpenAI reports it (``prompt_tokens`` /
        ``input_tokens``), *including* the cached ones; ``cached_input_tokens`` (from
        ``*_tokens_details.cached_tokens``) is the part billed at the cached rate. Output tokens
        include reasoning tokens, as OpenAI bills them.
        """
        for label, value in (
            ("input", input_tokens),
            ("cached", cached_input_tokens),
            ("output", output_tokens),
        ):
            if value < 0:
                raise ValueError(f"{label} token count must not be negative")
        usage = Usage(input_tokens, min(cached_input_tokens, input_tokens), output_tokens)
        return self.usage_cost_micros(model, usage, tier="default")

    def usage_cost_micros(self, model: str, usage: Usage, *, tier: str | None = None) -> int:
        """What a call that consumed ``usage`` costs, in micro-dollars rounded up.

        The tier is the one the response reported (``usage.service_tier``), else ``tier``; with
        neither, the highest of the model's tiers."""
        price = self.price(model)
        reported = normal_tier(usage.service_tier) if usage.service_tier is not None else None
        rates = price.rates_for(reported or normal_tier(tier), usage.input_tokens)
        return decimal_micros_ceil(self._amount(price, rates, usage))

    def _amount(self, price: ModelPrice, rates: Rates, usage: Usage) -> Decimal:
        cached = min(usage.cached_tokens, usage.input_tokens)
        image = min(usage.image_input_tokens, usage.input_tokens - cached)
        audio = min(usage.audio_input_tokens, usage.input_tokens - cached - image)
        written = min(usage.cache_write_tokens, usage.input_tokens - cached - image - audio)
        text = usage.input_tokens - cached - image - audio - written
        audio_out = min(usage.audio_output_tokens, usage.output_tokens)
        total = (
            text * rates.input
            + cached * rates.cached_input
            + written * rates.cache_write
            + image * rates.image_input
            + audio * rates.audio_input
            + (usage.output_tokens - audio_out) * rates.output
            + audio_out * rates.audio_output
        )
        for tool, calls in usage.tool_calls:
            fee = _search_fee(price, tool) if tool.startswith(CHAT_SEARCH) else self._tools.get(tool)
            if fee is None:
                raise UnknownModelPrice(f"tool:{tool}")
            total += calls * fee * _USD
        for kind, count in usage.images:
            total += count * _per_image(price, kind) * _USD
        if usage.characters and price.per_million_characters is not None:
            total += usage.characters * price.per_million_characters
        if usage.audio_milliseconds and price.per_minute is not None:
            total += usage.audio_milliseconds * price.per_minute * _USD / 60_000
        return total

    def worst_case_micros(
        self,
        model: str,
        input_tokens: int,
        max_output_tokens: int,
        *,
        tier: str | None = "default",
        extra: Usage | None = None,
    ) -> int:
        """The most a call can cost: all input uncached (and written to the cache where that is
        dearer), every allowed output token used, at the dearest tier the request may be served
        at (``tier`` None: auto, the highest of the model's tiers) and the long-context rates
        when the input may cross their threshold; plus ``extra`` (tool calls, images, audio,
        characters) as given."""
        price = self.price(model)
        rates = price.rates_for(normal_tier(tier) if tier is not None else None, input_tokens)
        if price.long_context is not None:
            threshold = price.long_context[0]
            if input_tokens >= threshold * LONG_CONTEXT_MARGIN:
                rates = rates.highest(price.rates_for(normal_tier(tier) if tier else None, threshold + 1))
        rates = replace(rates, input=max(rates.input, rates.cache_write), cached_input=rates.input)
        worst = Usage(input_tokens, 0, max_output_tokens)
        if extra is not None:
            worst = replace(
                extra,
                input_tokens=input_tokens + extra.input_tokens,
                output_tokens=max_output_tokens + extra.output_tokens,
                cached_tokens=0,
                cache_write_tokens=0,
                service_tier=None,
            )
        return decimal_micros_ceil(self._amount(price, rates, worst))


def _search_fee(price: ModelPrice, tool: str) -> Decimal | None:
    """A chat search model's fee for one search of a context size (unknown size: the dearest)."""
    fees = dict(price.search_per_call)
    size = tool[len(CHAT_SEARCH) :]
    return fees.get(size, max(fees.values())) if fees else None


def _per_image(price: ModelPrice, kind: str) -> Decimal:
    """USD for one image of ``quality:size``; an unknown kind costs the dearest the row lists."""
    table = dict(price.per_image)
    if kind in table:
        return table[kind]
    if not table:
        raise UnknownModelPrice(f"{price.model} image {kind}")
    return max(table.values())


# Columns an override of a bundled model keeps from the bundled row: what the call is (its context
# window, what an image or a search is billed), not the token prices the policy restates.
_INHERITED = (
    "context_window",
    "long_context",
    "per_image",
    "image_output_tokens",
    "max_image_input_tokens",
    "per_million_characters",
    "per_minute",
    "max_audio_output_tokens_per_character",
    "search_per_call",
)


def override_price(model: str, entry: Any, bundled: ModelPrice | None = None) -> ModelPrice:
    """A ``spec.pricing.models`` entry as a ModelPrice (every column the policy model knows); an
    override of a bundled model keeps that row's non-token columns (``_INHERITED``), so that
    restating a token price never makes a search, an image or a long context free."""
    base = ModelPrice.from_values(
        model,
        entry.input_per_million,
        entry.output_per_million,
        getattr(entry, "cached_input_per_million", None),
    )
    if bundled is not None:
        base = replace(base, **{name: getattr(bundled, name) for name in _INHERITED})
    columns: dict[str, Any] = {}
    window = getattr(entry, "context_window_tokens", None)
    if window is not None:
        columns["context_window"] = int(window)
    for attr, name in (
        ("cache_write_per_million", "cache_write_per_million"),
        ("image_input_per_million", "image_input_per_million"),
        ("audio_input_per_million", "audio_input_per_million"),
        ("audio_output_per_million", "audio_output_per_million"),
    ):
        value = getattr(entry, attr, None)
        if value is not None:
            columns[name] = to_decimal(value)
    priced = replace(base, **columns)
    tiers = getattr(entry, "service_tier_multipliers", None) or {}
    return replace(
        priced,
        tiers=tuple(
            (tier, priced.rates.scaled(to_decimal(factor)))
            for tier, factor in sorted(tiers.items())
            if tier != "default"
        ),
    )


@lru_cache(maxsize=1)
def _bundled() -> PriceTable:
    text = resources.files("openai_policy_sidecar").joinpath("data/prices.json").read_text(encoding="utf-8")
    return PriceTable.from_document(json.loads(text))
