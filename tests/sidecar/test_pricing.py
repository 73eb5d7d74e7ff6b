"""The bundled price table, dated-id resolution, policy overrides and cost arithmetic."""

import json
from datetime import date
from decimal import Decimal
from importlib import resources

import pytest

from openai_policy_api import PolicySpec
from openai_policy_sidecar.pricing import ModelPrice, PriceTable, UnknownModelPrice, base_model_id


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.bundled()


def test_bundled_table_is_dated_and_sourced(table):
    raw = json.loads(resources.files("openai_policy_sidecar").joinpath("data/prices.json").read_text())
    assert date.fromisoformat(raw["asOf"]) == date.fromisoformat(table.as_of)
    assert table.source
    for model, entry in raw["models"].items():
        # prices are decimal strings so that no binary float ever enters a price; counts are ints
        for key, value in entry.items():
            if key in _COUNT_COLUMNS:
                assert isinstance(value, int) and value >= 0, (model, key)
            elif key in _NESTED_COLUMNS:
                assert isinstance(value, dict), (model, key)
            else:
                assert isinstance(value, str), (model, key)
        assert set(entry) <= _COLUMNS, model
        assert isinstance(entry["contextWindow"], int), model
    assert all(isinstance(fee, str) for fee in raw["toolCalls"].values())


_COUNT_COLUMNS = {"contextWindow", "maxImageInputTokens", "maxAudioOutputTokensPerCharacter"}
_NESTED_COLUMNS = {"tiers", "longContext", "perImage", "imageOutputTokens", "searchPerCall"}
_COLUMNS = (
    _COUNT_COLUMNS
    | _NESTED_COLUMNS
    | {
        "input",
        "cachedInput",
        "output",
        "cacheWrite",
        "imageInput",
        "cachedImageInput",
        "audioInput",
        "audioOutput",
        "perMillionCharacters",
        "perMinute",
    }
)


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-3.5-turbo",
        "gpt-4-turbo",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "omni-moderation-latest",
    ],
)
def test_current_models_are_priced(table, model):
    price = table.price(model)
    assert price.input_per_million >= 0 and price.output_per_million >= 0


def test_known_prices(table):
    gpt4o = table.price("gpt-4o")
    assert (gpt4o.input_per_million, gpt4o.output_per_million, gpt4o.cached_input_per_million) == (
        Decimal("2.5"),
        Decimal("10"),
        Decimal("1.25"),
    )
    assert table.context_window("gpt-4o") == 128_000
    mini = table.price("gpt-4o-mini")
    assert (mini.input_per_million, mini.cached_input_per_million, mini.output_per_million) == (
        Decimal("0.15"),
        Decimal("0.075"),
        Decimal("0.6"),
    )


@pytest.mark.parametrize(
    "model", ["omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest"]
)
def test_moderation_is_free(table, model):
    assert table.cost_micros(model, 10_000, 0, 0) == 0


def test_embeddings_bill_input_only(table):
    assert table.cost_micros("text-embedding-3-small", 1_000_000) == 20_000  # $0.02
    assert table.price("text-embedding-3-large").output_per_million == 0


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
    ],
)
def test_dated_ids_resolve_to_their_base(table, model, base):
    assert base_model_id(model) == base
    assert table.price(model) == table.price(base)


def test_exact_snapshot_entry_wins_over_base(table):
    assert table.price("gpt-4o-2024-05-13").input_per_million == Decimal("5")
    assert table.price("gpt-4o-2024-11-20").input_per_million == Decimal("2.5")


def test_base_model_id_leaves_plain_ids_alone():
    assert base_model_id("gpt-4o") is None
    assert base_model_id("gpt-4.1-mini") is None
    assert base_model_id("o1-pro") is None


@pytest.mark.parametrize("model", ["my-local-llama", "gpt-unknown-9", "ft:gpt-4o-mini:acme::abc123", ""])
def test_unknown_model_raises(table, model):
    with pytest.raises(UnknownModelPrice) as raised:
        table.price(model)
    assert raised.value.model == model
    assert "spec.pricing.models" in str(raised.value)
    assert not table.knows(model)
    with pytest.raises(UnknownModelPrice):
        table.worst_case_micros(model, 10, 10)


def test_cost_arithmetic_is_exact_and_rounds_up(table):
    # gpt-4o: 1000 input ($2.50/M) of which 200 cached ($1.25/M), 500 output ($10/M)
    # = 800*2.5 + 200*1.25 + 500*10 = 2000 + 250 + 5000 micros
    assert table.cost_micros("gpt-4o", 1000, 200, 500) == 7250
    # gpt-4o-mini: 1 input token = 0.15 micros -> rounds up to 1 micro
    assert table.cost_micros("gpt-4o-mini", 1, 0, 0) == 1
    assert table.cost_micros("gpt-4o-mini", 0, 0, 0) == 0
    # cached never exceeds input
    assert table.cost_micros("gpt-4o", 100, 500, 0) == table.cost_micros("gpt-4o", 100, 100, 0)


def test_worst_case_is_all_input_uncached_plus_full_output(table):
    assert table.worst_case_micros("gpt-4o", 1000, 500) == 1000 * 2.5 + 500 * 10
    assert table.worst_case_micros("gpt-4o", 1000, 500) >= table.cost_micros("gpt-4o", 1000, 900, 500)


def test_cost_rejects_negative_tokens(table):
    with pytest.raises(ValueError):
        table.cost_micros("gpt-4o", -1, 0, 0)


def test_policy_overrides_add_and_replace_prices():
    spec = PolicySpec.model_validate(
        {
            "pricing": {
                "models": {
                    "my-local-llama": {"inputPerMillion": 0.5, "outputPerMillion": 1},
                    "gpt-4o": {"inputPerMillion": 2, "cachedInputPerMillion": 0.5, "outputPerMillion": 8},
                }
            }
        }
    )
    table = PriceTable.for_policy(spec)
    llama = table.price("my-local-llama")
    assert llama.input_per_million == Decimal("0.5")
    assert llama.cached_input_per_million == Decimal("0.5")  # absent: same as input
    assert table.price("gpt-4o").input_per_million == Decimal("2")
    # a policy's base-id override covers the dated snapshots too, even one with its own bundled price
    assert table.price("gpt-4o-2024-08-06").output_per_million == Decimal("8")
    assert table.price("gpt-4o-2024-05-13").output_per_million == Decimal("8")
    # everything else still comes from the bundled table
    assert table.price("gpt-4.1") == PriceTable.bundled().price("gpt-4.1")
    # the bundled table itself is untouched
    assert PriceTable.bundled().price("gpt-4o").input_per_million == Decimal("2.5")
    assert not PriceTable.bundled().knows("my-local-llama")


def test_policy_without_overrides_uses_bundled_table():
    assert PriceTable.for_policy(PolicySpec()) is PriceTable.bundled()


def test_float_override_prices_are_converted_exactly():
    spec = PolicySpec.model_validate(
        {"pricing": {"models": {"m": {"inputPerMillion": 0.1, "outputPerMillion": 0.3}}}}
    )
    table = PriceTable.for_policy(spec)
    assert table.price("m").input_per_million == Decimal("0.1")
    assert table.cost_micros("m", 10_000_000, 0, 10_000_000) == 4_000_000


def test_negative_price_is_refused():
    with pytest.raises(ValueError):
        ModelPrice.from_values("m", -1, 1)
