"""Errors raised by the state layer."""

from __future__ import annotations


class StoreUnavailable(RuntimeError):
    """The shared store cannot be reached (connection refused, timeout, loading...).

    Raised promptly (short socket timeouts), never after a hang. The proxy maps it to a refusal
    when the policy fails closed.
    """


class BudgetExceeded(Exception):
    """Reserving this amount would take a budget window past its limit."""

    def __init__(
        self,
        window: str,
        limit_micros: int,
        spent_micros: int,
        reserved_micros: int,
        kind: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(window, limit_micros, spent_micros, reserved_micros)
        self.window = window
        self.limit_micros = limit_micros
        self.spent_micros = spent_micros
        self.reserved_micros = reserved_micros
        # Whose budget: None for the policy's, else "user" or "feature" and its name.
        self.kind = kind
        self.name = name

    @property
    def owner(self) -> str:
        """``user 'alice'``, ``feature 'search'`` or ``this policy``."""
        return f"{self.kind} {self.name!r}" if self.kind else "this policy"

    def __str__(self) -> str:
        from .money import micros_to_usd

        return (
            f"the {self.window} budget of {self.owner} (${micros_to_usd(self.limit_micros)}) is used up "
            f"(spent ${micros_to_usd(self.spent_micros)}, ${micros_to_usd(self.reserved_micros)} "
            "reserved by calls in flight)"
        )
