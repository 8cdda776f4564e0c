"""Where a job's time went: parts timed as they run, a part inside another carved out of it."""

from __future__ import annotations

from kdcl.common.timing import PartTimer


class Clock:
    """A clock the test moves by hand: the parts' seconds are then exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_inner_part_is_carved_out_of_the_outer_one_and_the_parts_add_up_to_the_wall_time():
    clock = Clock()
    timer = PartTimer(clock)
    with timer.part("prepare"):
        clock.now += 1.0
        with timer.part("teacher outputs"):
            clock.now += 5.0
        clock.now += 0.5
        with timer.part("teacher outputs"):  # a part that runs twice adds up
            clock.now += 2.0
    with timer.part("train"):
        clock.now += 10.0
    assert timer.seconds == {"prepare": 1.5, "teacher outputs": 7.0, "train": 10.0}
    assert list(timer.seconds) == ["prepare", "teacher outputs", "train"]  # the order they first ran
    assert sum(timer.seconds.values()) == clock.now
