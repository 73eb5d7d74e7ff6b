"""The price table's per-surface columns: context windows, service tiers, long-context and
cache-write rates, tool fees, per-image, per-character and per-minute prices, and the worst case
that must cover every one of them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from openai_policy_api import load_policy
from openai_policy_devkit.sidecar import policy_document
from openai_policy_sidecar.pricing import PriceTable, UnknownModelPrice
from openai_policy_sidecar.reported_usage import Usage


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.bundled()


def _policy_table(**pricing) -> PriceTable:
    return PriceTable.for_policy(load_policy(policy_document({"pricing": pricing})).spec)


def test_every_text_model_has_a_context_window(table):
    for model in table.models():
        window = table.context_window(model)
        assert window >= 0, model
    assert table.context_window("gpt-4.1") == 1_047_576
    assert table.context_window("gpt-4o-2024-08-06") == 128_000  # a dated id resolves to its base


def test_a_policy_states_a_context_window(table):
    priced = _policy_table(models={"ft:gpt-4o-mini:acme::x1": {"inputPerMillion": 1, "outputPerMillion": 2}})
    with pytest.raises(LookupError, match="contextWindowTokens"):
        priced.context_window("ft:gpt-4o-mini:acme::x1")
    stated = _policy_table(
        models={
            "ft:gpt-4o-mini:acme::x1": {
                "inputPerMillion": 1,
                "outputPerMillion": 2,
                "contextWindowTokens": 64_000,
            }
        }
    )
    assert stated.context_window("ft:gpt-4o-mini:acme::x1") == 64_000
    with pytest.raises(UnknownModelPrice):
        table.context_window("no-such-model")


def test_service_tiers(table):
    usage = Usage(1_000, 0, 1_000)
    default = table.usage_cost_micros("gpt-5", usage, tier="default")
    assert default == 1_000 * Decimal("1.25") + 1_000 * 10
    assert table.usage_cost_micros("gpt-5", usage, tier="priority") == 2 * default
    assert table.usage_cost_micros("gpt-5", usage, tier="flex") == default // 2
    # The tier the response reports wins over the one asked for; "fast" is priority.
    assert table.usage_cost_micros("gpt-5", Usage(1_000, 0, 1_000, service_tier="fast")) == 2 * default
    # A tier the model is not offered at is billed at default; an unknown one at the dearest.
    assert table.usage_cost_micros("gpt-4o-mini", usage, tier="priority") == table.cost_micros(
        "gpt-4o-mini", 1_000, 0, 1_000
    )
    assert table.usage_cost_micros("gpt-5", Usage(1_000, 0, 1_000, service_tier="ultra")) == 2 * default
    # o4-mini's priority rates are its own, not a multiple.
    assert table.usage_cost_micros("o4-mini", usage, tier="priority") == 1_000 * 2 + 1_000 * 8


def test_worst_case_covers_every_tier_for_auto(table):
    worst = table.worst_case_micros("gpt-5", 1_000, 1_000, tier=None)
    for tier in ("default", "flex", "priority", "scale"):
        assert worst >= table.usage_cost_micros("gpt-5", Usage(1_000, 0, 1_000, service_tier=tier))
    assert worst == table.worst_case_micros("gpt-5", 1_000, 1_000, tier="priority")


def test_policy_tier_multipliers_and_tool_fees():
    priced = _policy_table(
        models={
            "my-model": {
                "inputPerMillion": 1,
                "outputPerMillion": 2,
                "serviceTierMultipliers": {"priority": 3},
            }
        },
        toolCalls={"web_search": 0.02},
    )
    usage = Usage(1_000, 0, 1_000, tool_calls=(("web_search", 2),))
    assert priced.usage_cost_micros("my-model", usage, tier="priority") == 3 * 3_000 + 40_000
    assert priced.usage_cost_micros("my-model", usage, tier="default") == 3_000 + 40_000


@pytest.mark.parametrize(
    "pricing",
    [
        {
            "models": {
                "m": {"inputPerMillion": 1, "outputPerMillion": 2, "serviceTierMultipliers": {"turbo": 2}}
            }
        },
        {"toolCalls": {"Web Search": 0.01}},
        {"toolCalls": {"web_search": -1}},
    ],
)
def test_invalid_pricing_is_refused_with_a_clear_message(pricing):
    with pytest.raises(ValueError, match="tier|tool|fee|greater"):
        load_policy(policy_document({"pricing": pricing}))


def test_tool_fees(table):
    usage = Usage(0, 0, 0, tool_calls=(("web_search", 3), ("file_search", 4), ("code_interpreter", 1)))
    assert table.usage_cost_micros("gpt-5", usage, tier="default") == 30_000 + 10_000 + 30_000
    with pytest.raises(UnknownModelPrice):
        table.usage_cost_micros("gpt-5", Usage(tool_calls=(("image_generation", 1),)))


def test_long_context_rates(table):
    short = table.usage_cost_micros("gpt-5.4", Usage(272_000, 0, 1_000), tier="default")
    long = table.usage_cost_micros("gpt-5.4", Usage(272_001, 0, 1_000), tier="default")
    assert short == 272_000 * Decimal("2.5") + 1_000 * 15
    assert long == 272_001 * 5 + 1_000 * Decimal("22.5")
    # The worst case takes the long rates as soon as a count a little short of the line could cross it.
    assert table.worst_case_micros("gpt-5.4", 260_000, 1_000) == 260_000 * 5 + 1_000 * Decimal("22.5")
    assert table.worst_case_micros("gpt-5.4", 200_000, 1_000) == 200_000 * Decimal("2.5") + 1_000 * 15


def test_cache_writes():
    priced = _policy_table(
        models={
            "m": {
                "inputPerMillion": 3,
                "cachedInputPerMillion": 0.3,
                "cacheWritePerMillion": 3.75,
                "outputPerMillion": 15,
            }
        }
    )
    usage = Usage(10_000, 2_000, 100, cache_write_tokens=5_000)
    assert (
        priced.usage_cost_micros("m", usage, tier="default")
        == 3_000 * 3 + 2_000 * Decimal("0.3") + 5_000 * Decimal("3.75") + 100 * 15
    )
    # The worst case bills every input token as written to the cache (dearer than reading it).
    assert priced.worst_case_micros("m", 10_000, 100) == 10_000 * Decimal("3.75") + 100 * 15
    # Without a cacheWrite price, writes cost the input price (OpenAI's models today).
    assert PriceTable.bundled().usage_cost_micros(
        "gpt-4o", Usage(1_000, 0, 0, cache_write_tokens=1_000), tier="default"
    ) == PriceTable.bundled().cost_micros("gpt-4o", 1_000)


def test_images_audio_and_characters(table):
    assert table.usage_cost_micros("dall-e-3", Usage(images=(("hd:1792x1024", 2),))) == 240_000
    # An unknown quality or size costs the dearest image the row lists.
    assert table.usage_cost_micros("dall-e-2", Usage(images=(("standard:9x9", 1),))) == 20_000
    assert table.usage_cost_micros("tts-1", Usage(characters=1_000)) == 15_000
    assert table.usage_cost_micros("whisper-1", Usage(audio_milliseconds=90_000)) == 9_000
    gpt_image = Usage(1_100, 0, 4_160, image_input_tokens=1_000)
    assert table.usage_cost_micros("gpt-image-1", gpt_image) == 100 * 5 + 1_000 * 10 + 4_160 * 40


def test_image_and_audio_tokens_of_text_models_bill_as_text(table):
    # Chat usage may break its prompt down (image_tokens, audio_tokens): a row without image or
    # audio prices bills them as the text tokens they are, never as free.
    plain = table.cost_micros("gpt-4o", 1_000, 0, 100)
    broken_down = Usage(1_000, 0, 100, image_input_tokens=700, audio_input_tokens=100, audio_output_tokens=50)
    assert table.usage_cost_micros("gpt-4o", broken_down, tier="default") == plain
    # Long-context rates carry over to image tokens too.
    long = Usage(300_000, 0, 0, image_input_tokens=100_000)
    assert table.usage_cost_micros("gpt-5.4", long, tier="default") == 300_000 * 5


def test_an_override_of_a_bundled_model_keeps_what_the_call_is():
    priced = _policy_table(
        models={"gpt-4o-mini-search-preview": {"inputPerMillion": 0.1, "outputPerMillion": 0.5}}
    )
    search = Usage(0, 0, 0, tool_calls=(("chat_search:low", 1),))
    assert priced.usage_cost_micros("gpt-4o-mini-search-preview", search, tier="default") == 25_000
    assert priced.context_window("gpt-4o-mini-search-preview") == 128_000
    assert priced.price("gpt-4o-mini-search-preview").input_per_million == Decimal("0.1")
