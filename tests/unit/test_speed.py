"""Learning speed of a stage (kdcl/reporting/speed.py): accuracy at fractions of the budget and the area
under the validation curve, against hand computations on made-up curves."""

import pytest

from kdcl.reporting.speed import LearningSpeed, budget_epoch, curve_from_epochs


def test_ten_epochs_by_hand():
    curve = [0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.85, 0.95, 0.9, 0.92]
    speed = LearningSpeed.from_curve(curve, 10)
    assert speed.val_acc_at_25 == 0.5  # 25 % of 10 epochs = 2.5: rounded down to epoch 2
    assert speed.val_acc_at_50 == 0.8  # epoch 5
    assert speed.val_acc_at_100 == 0.92  # the last epoch, not the best one (0.95)
    assert speed.val_auc == pytest.approx(7.32 / 10)  # step rule: the mean of the ten values
    assert speed.val_curve == curve


def test_a_fraction_before_the_first_epoch_takes_the_first():
    assert [budget_epoch(p, 3) for p in (25, 50, 100)] == [1, 1, 3]  # 0.75 and 1.5 epochs
    assert [budget_epoch(p, 4) for p in (25, 50, 100)] == [1, 2, 4]
    speed = LearningSpeed.from_curve([0.4, 0.6, 0.7], 3)
    assert (speed.val_acc_at_25, speed.val_acc_at_50, speed.val_acc_at_100) == (0.4, 0.4, 0.7)
    assert speed.val_auc == pytest.approx(1.7 / 3)


def test_a_one_epoch_stage_has_its_one_value_everywhere():
    speed = LearningSpeed.from_curve([0.3], 1)
    assert (speed.val_auc, speed.val_acc_at_25, speed.val_acc_at_50, speed.val_acc_at_100) == (0.3, 0.3, 0.3, 0.3)


def test_epochs_not_validated_take_the_latest_validated_one_and_do_not_count_in_the_area():
    curve = curve_from_epochs({0: 0.1, 2: 0.5})  # 0-based epochs 0 and 2 validated
    assert curve == [0.1, None, 0.5]
    speed = LearningSpeed.from_curve([*curve, None], 4)  # validated every other epoch
    assert (speed.val_acc_at_25, speed.val_acc_at_50, speed.val_acc_at_100) == (0.1, 0.1, 0.5)
    assert speed.val_auc == pytest.approx(0.3)


def test_a_stage_stopped_before_its_budget_reports_its_last_epoch_at_every_later_fraction():
    speed = LearningSpeed.from_curve([0.2, 0.4], 8)  # 2 of 8 epochs ran (max_time, max_steps)
    assert (speed.val_acc_at_25, speed.val_acc_at_50, speed.val_acc_at_100) == (0.4, 0.4, 0.4)


def test_no_curve_has_no_speed():
    for speed in (LearningSpeed.from_curve([], 5), LearningSpeed()):
        assert speed.to_json() == {"val_curve": [], "val_auc": None, "val_acc_at_25": None, "val_acc_at_50": None,
                                   "val_acc_at_100": None}  # fmt: skip
