"""Money is integer micro-dollars; conversions go through Decimal, never float arithmetic."""

from decimal import Decimal

import pytest

from openai_policy_store.money import MICROS_PER_USD, decimal_micros_ceil, micros_to_usd, usd_to_micros


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        (0, 0),
        (1, 1_000_000),
        (0.1, 100_000),  # float through its decimal text: exactly 100000, not 100000.0000000000055
        (25.5, 25_500_000),
        ("12.345678", 12_345_678),
        (" 3 ", 3_000_000),
        (Decimal("0.0000005"), 1),  # half a micro rounds half up
        (Decimal("0.0000004"), 0),
        (1e-06, 1),
        (123456789.123456, 123_456_789_123_456),
        (-2.5, -2_500_000),
    ],
)
def test_usd_to_micros(value, micros):
    result = usd_to_micros(value)
    assert result == micros
    assert type(result) is int


def test_float_sums_stay_exact():
    # 0.1 + 0.2 != 0.3 in floats; in micros each converts exactly and sums exactly.
    assert usd_to_micros(0.1) + usd_to_micros(0.2) == usd_to_micros(0.3)
    assert sum(usd_to_micros(0.01) for _ in range(1000)) == 10 * MICROS_PER_USD


@pytest.mark.parametrize("bad", ["abc", "", "nan", "inf", float("nan"), float("inf")])
def test_usd_to_micros_rejects_non_amounts(bad):
    with pytest.raises(ValueError):
        usd_to_micros(bad)


@pytest.mark.parametrize("bad", [True, None, [1]])
def test_usd_to_micros_rejects_wrong_types(bad):
    with pytest.raises(TypeError):
        usd_to_micros(bad)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.00"),
        (12_500_000, "12.50"),
        (1_234, "0.001234"),
        (1, "0.000001"),
        (100_000_000, "100.00"),
        (-1_500_000, "-1.50"),
        (10**15 + 7, "1000000000.000007"),
    ],
)
def test_micros_to_usd(micros, text):
    assert micros_to_usd(micros) == text


def test_micros_to_usd_round_trips():
    for micros in (0, 1, 99, 1_000_001, 987_654_321):
        assert usd_to_micros(micros_to_usd(micros)) == micros


def test_micros_to_usd_requires_int():
    with pytest.raises(TypeError):
        micros_to_usd(1.5)  # type: ignore[arg-type]


def test_fractional_micros_round_up():
    assert decimal_micros_ceil(Decimal("0.0001")) == 1
    assert decimal_micros_ceil(Decimal("7")) == 7
