"""Keys the state layer needs beyond ``store_keys`` (same ``oaip:{ns/name}:`` prefix and hash tag).

Reservation tracking needs two keys per policy; they are built here from ``store_keys``'
prefix and tag so that every budget script's keys share one Redis Cluster slot. (Proposed for
``store_keys`` proper; kept here until the lead moves them.)
"""

from __future__ import annotations

from .. import store_keys


def reservations_key(namespace: str, name: str) -> str:
    """Hash: reservation id -> ``amount|window|bucket|window|bucket...`` for calls in flight."""
    return ":".join((store_keys.PREFIX, store_keys.policy_tag(namespace, name), "reservations"))


def reservation_deadlines_key(namespace: str, name: str) -> str:
    """Sorted set: reservation id scored by the epoch millisecond after which it is swept."""
    return ":".join((store_keys.PREFIX, store_keys.policy_tag(namespace, name), "reservation-deadlines"))
