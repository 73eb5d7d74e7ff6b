"""Money as integer micro-dollars.

Every amount the sidecar adds, compares or stores is an ``int`` of micro-dollars (1 USD =
1,000,000). Floats appear only at the edges (a policy's ``usd: 25.5``) and are converted through
their decimal text, so ``0.1`` becomes exactly 100,000 micros and no binary rounding error can
accumulate across millions of requests.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
_MICROS = Decimal(MICROS_PER_USD)


def to_decimal(value: float | int | str | Decimal) -> Decimal:
    """A finite Decimal from a float (through its shortest repr), int, decimal string or Decimal."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not an amount of money")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        # str(float) is the shortest text that round-trips: 0.1 -> "0.1", not 0.1000000000000000055...
        result = Decimal(str(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal amount: {value!r}") from None
    else:
        raise TypeError(f"not an amount of money: {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return result


def usd_to_micros(value: float | int | str | Decimal) -> int:
    """US dollars -> integer micro-dollars, rounding half up at the sixth decimal."""
    return int((to_decimal(value) * _MICROS).to_integral_value(rounding=ROUND_HALF_UP))


def decimal_micros_ceil(value: Decimal) -> int:
    """A fractional micro-dollar amount rounded up: costs never round in the caller's favour."""
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def micros_to_usd(micros: int) -> str:
    """Integer micro-dollars -> a decimal USD string with at least two decimals.

    ``12_500_000 -> "12.50"``, ``1_234 -> "0.001234"``, ``0 -> "0.00"``: exact (no float), short
    enough for a status column, and precise down to one micro-dollar.
    """
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"micros must be an int, not {type(micros).__name__}")
    text = f"{Decimal(micros) / _MICROS:.6f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{whole}.{frac.ljust(2, '0')}"


def micros_to_fixed_usd(micros: int) -> str:
    """Integer micro-dollars (negatives as 0) -> USD with exactly six decimals: ``12_500_000 ->
    "12.500000"``, the form of the remaining-budget headers (a fixed width an app can parse)."""
    whole, frac = divmod(max(0, micros), 1_000_000)
    return f"{whole}.{frac:06d}"
