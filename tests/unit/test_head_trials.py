"""What trying a chain's head at its end teaches the runs after it (no Ray)."""

from __future__ import annotations

from castray.agent.transports.head_trials import GAIN, KEPT, REMEMBER_SECONDS, HeadTrials

MB = 1_000_000


def test_a_head_whose_try_gained_nothing_is_not_tried_again_at_its_pace() -> None:
    """16 equal hosts: the head h10 took 11.4 MB/s, and h11, fed by the source in its place,
    11.8. Every later broadcast from h1 whose head h10 keeps about that pace leaves it where
    it is (each try broke every stream down the chain: a second of a 4.2 s unicast)."""
    trials = HeadTrials()
    assert trials.worth_trying("h1", "h10", 11.4 * MB, now=0.0)
    trials.learn("h1", "h10", before=11.4 * MB, after=11.8 * MB, now=10.0)
    assert not trials.worth_trying("h1", "h10", 11.0 * MB, now=20.0)
    assert not trials.worth_trying("h1", "h10", KEPT * 11.4 * MB, now=20.0)


def test_a_head_that_slowed_down_another_source_or_an_old_lesson_is_tried() -> None:
    trials = HeadTrials()
    trials.learn("h1", "h10", before=11.4 * MB, after=11.8 * MB, now=10.0)
    assert trials.worth_trying("h1", "h10", 0.7 * 11.4 * MB, now=20.0)  # its link reshaped
    assert trials.worth_trying("h2", "h10", 11.4 * MB, now=20.0)
    assert trials.worth_trying("h1", "h11", 11.4 * MB, now=20.0)
    assert trials.worth_trying("h1", "h10", 11.4 * MB, now=10.0 + REMEMBER_SECONDS + 1)


def test_a_try_that_gained_is_not_remembered_and_forgets_an_earlier_one() -> None:
    """A head at 1.2 MB/s (a 10 Mbit/s link) held everyone to its pace: the one fed by the
    source in its place took 11.8. It is tried whenever it heads a chain."""
    trials = HeadTrials()
    trials.learn("h1", "h10", before=11.4 * MB, after=11.8 * MB, now=10.0)
    trials.learn("h1", "h10", before=1.2 * MB, after=GAIN * 1.2 * MB, now=30.0)
    assert trials.worth_trying("h1", "h10", 11.4 * MB, now=40.0)
    assert trials.worth_trying("h1", "h10", 1.2 * MB, now=40.0)
