"""kubectl oaip status's text for a policy's windows: their start and end, and the top spenders."""

from __future__ import annotations

from openai_policy_kubectl.summary import details

POLICY = {
    "metadata": {"namespace": "shop", "name": "checkout", "generation": 2},
    "spec": {},
    "status": {
        "spend": [
            {
                "window": "day",
                "bucket": "2026-11-30T00:00+01:00",
                "start": "2026-11-29T23:00:00Z",
                "end": "2026-11-30T23:00:00Z",
                "usd": "8.77",
                "limitUsd": "50.00",
                "remainingUsd": "41.23",
                "percent": 17,
                "topUsers": [{"name": "alice", "usd": "4.72"}, {"name": "bob", "usd": "4.05"}],
                "topFeatures": [{"name": "search", "usd": "8.77"}],
            },
            {"window": "month", "bucket": "2026-11", "usd": "8.77"},
        ]
    },
}


def test_windows_show_their_bounds_and_top_spenders():
    lines = details(POLICY)
    header = next(line for line in lines if "WINDOW" in line)
    assert header.split() == ["WINDOW", "FROM", "UNTIL", "SPENT", "LIMIT", "LEFT", "USED"]
    day = next(line for line in lines if line.strip().startswith("day "))
    assert day.split() == [
        "day",
        "2026-11-29T23:00:00Z",
        "2026-11-30T23:00:00Z",
        "$8.77",
        "$50.00",
        "$41.23",
        "17%",
    ]
    # A status written before windows had bounds shows its bucket instead.
    month = next(line for line in lines if line.strip().startswith("month "))
    assert month.split()[:3] == ["month", "2026-11", "-"]
    assert "  Top users (day): alice $4.72, bob $4.05" in lines
    assert "  Top features (day): search $8.77" in lines
    assert not [line for line in lines if "Top users (month)" in line]
