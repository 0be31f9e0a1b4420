"""Tests for aiowstunnel/backoff.py: growth, cap, full jitter and reset, with injected random."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiowstunnel.backoff import Backoff, BackoffPolicy

TOP = 1.0 - 1e-9  # the largest draw random.random() can return, near enough
NAN = math.nan
INF = math.inf


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


def test_defaults() -> None:
    policy = BackoffPolicy()
    assert (policy.initial, policy.max, policy.factor, policy.reset_after) == (1, 60, 2, 30)


def test_ceiling_grows_as_initial_times_factor_to_the_n() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.5, max=1000, factor=3), random=lambda: TOP)
    assert delays(backoff, 6) == pytest.approx([0.5 * 3**n * TOP for n in range(6)])
    assert backoff.attempt == 6


def test_ceiling_is_capped_at_max() -> None:
    backoff = Backoff(BackoffPolicy(initial=1, max=10, factor=2), random=lambda: TOP)
    assert delays(backoff, 8) == pytest.approx([x * TOP for x in (1, 2, 4, 8, 10, 10, 10, 10)])


def test_ceiling_stays_at_max_after_a_very_long_outage() -> None:
    backoff = Backoff(BackoffPolicy(initial=1, max=60, factor=2), random=lambda: 0.5)
    delays(backoff, 10_000)
    assert backoff.next_delay() == 30.0
    assert backoff.ceiling() == 60.0


def test_factor_1_is_a_constant_delay() -> None:
    backoff = Backoff(BackoffPolicy(initial=5, max=60, factor=1), random=lambda: TOP)
    assert delays(backoff, 4) == pytest.approx([5 * TOP] * 4)


def test_full_jitter_scales_the_ceiling_by_the_draw() -> None:
    backoff = Backoff(BackoffPolicy(initial=4, max=60, factor=2), random=lambda: 0.5)
    assert delays(backoff, 3) == [2.0, 4.0, 8.0]
    assert backoff.last_delay == 8.0


def test_full_jitter_reaches_zero() -> None:
    backoff = Backoff(BackoffPolicy(initial=4, max=60), random=lambda: 0.0)
    assert delays(backoff, 3) == [0.0, 0.0, 0.0]
    assert backoff.attempt == 3  # a zero delay still counts as a failure


@given(
    initial=st.floats(0.001, 100),
    extra=st.floats(0, 1000),
    factor=st.floats(1, 10),
    draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=80),
)
def test_property_every_delay_is_in_zero_to_ceiling(
    initial: float, extra: float, factor: float, draws: list[float]
) -> None:
    policy = BackoffPolicy(initial=initial, max=initial + extra, factor=factor)
    queue = iter(draws)
    backoff = Backoff(policy, random=lambda: next(queue))
    for n in range(len(draws)):
        ceiling = min(policy.max, initial * factor**n)
        assert backoff.ceiling() == pytest.approx(ceiling)
        delay = backoff.next_delay()
        assert 0 <= delay <= ceiling <= policy.max


def test_default_random_is_used_when_none_is_injected() -> None:
    backoff = Backoff(BackoffPolicy(initial=10, max=10))
    assert all(0 <= d < 10 for d in delays(backoff, 200))
    assert len(set(delays(backoff, 50))) > 1


def test_long_connection_resets_the_sequence() -> None:
    backoff = Backoff(BackoffPolicy(initial=1, max=60, reset_after=30), random=lambda: TOP)
    delays(backoff, 5)
    backoff.connection_ended(stayed_up=30.0)  # exactly reset_after counts as long enough
    assert backoff.attempt == 0
    assert backoff.last_delay == 0.0
    assert backoff.next_delay() == pytest.approx(1 * TOP)


@pytest.mark.parametrize("stayed_up", [0.0, 0.5, 29.999])
def test_short_connection_keeps_growing(stayed_up: float) -> None:
    backoff = Backoff(BackoffPolicy(initial=1, max=60, reset_after=30), random=lambda: TOP)
    delays(backoff, 3)
    backoff.connection_ended(stayed_up=stayed_up)
    assert backoff.attempt == 3
    assert backoff.next_delay() == pytest.approx(8 * TOP)


def test_reset_by_hand() -> None:
    backoff = Backoff(BackoffPolicy(initial=2, max=60), random=lambda: 0.5)
    delays(backoff, 4)
    backoff.reset()
    assert backoff.next_delay() == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial": 0}, "need 0 < initial"),
        ({"initial": -1}, "need 0 < initial"),
        ({"initial": 61}, "need 0 < initial \\(61\\) <= max \\(60"),
        ({"initial": 5, "max": 4}, "<= max \\(4\\)"),
        ({"max": 0}, "need 0 < initial"),
        ({"factor": 0.5}, "factor \\(0.5\\) must be >= 1"),
        ({"factor": 0}, "factor"),
        ({"factor": -2}, "factor"),
        ({"initial": NAN}, "initial"),
        ({"max": NAN}, "max"),
    ],
)
def test_policy_rejects_nonsense(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BackoffPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"factor": NAN},
        {"factor": INF},
        {"reset_after": NAN},
        {"reset_after": -1.0},
    ],
    ids=["factor=nan", "factor=inf", "reset_after=nan", "reset_after=-1"],
)
def test_policy_rejects_non_finite_factor_and_bad_reset_after(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_large_factor_stays_capped_after_many_attempts() -> None:
    backoff = Backoff(BackoffPolicy(initial=1, max=60, factor=1e5), random=lambda: 0.5)
    assert delays(backoff, 100)[-1] == 30.0


def test_the_ceiling_is_at_most_how_long_the_connection_has_been_down() -> None:
    # A server restarting refuses every attempt for a moment: four quick failures must not
    # put the next attempt 16 s out when the server has been gone for half a second.
    backoff = Backoff(BackoffPolicy(initial=1, max=60), random=lambda: TOP)
    quick = [backoff.next_delay(down_for=t) for t in (0.0, 0.1, 0.3, 0.5)]
    assert quick == pytest.approx([1 * TOP] * 4)  # never below initial, nor above it here
    assert backoff.attempt == 4
    assert backoff.next_delay(down_for=5.0) == pytest.approx(5 * TOP)  # the outage's length
    # never above the sequence's own ceiling: the sixth failure's is 32 s
    assert backoff.next_delay(down_for=600.0) == pytest.approx(32 * TOP)
    assert backoff.next_delay() == pytest.approx(60 * TOP)  # without it: the plain sequence


async def test_a_session_that_outlived_the_ceiling_starts_a_new_outage_a_flapping_one_does_not():
    import aiowstunnel
    from aiowstunnel.client import Client

    client = Client(aiowstunnel.CONNECT, "127.0.0.1", 9, "127.0.0.1", 0, "127.0.0.1", 9,
                    backoff=BackoffPolicy(initial=1, max=60, reset_after=30))  # fmt: skip
    delays(client.backoff, 2)  # two failures at the start: the ceiling is now 4 s
    client._down_since = 100.0
    client._session_ended(stayed_up=0.2)  # gone within the ceiling: flapping
    assert (client._down_since, client.backoff.attempt) == (100.0, 2)
    client._session_ended(stayed_up=16.0)  # up longer than the 4 s: this is a new outage
    assert client._down_since is None
    assert client.backoff.attempt == 2  # under reset_after: the sequence goes on


def test_a_busy_servers_retry_after_is_jittered_half_to_one_and_a_half_times() -> None:
    from aiowstunnel.backoff import asked_delay

    assert asked_delay(2.0, lambda: 0.0) == 1.0
    assert asked_delay(2.0, lambda: 0.5) == 2.0
    assert asked_delay(2.0, lambda: 0.999) == pytest.approx(2.998)
