"""DisBack's convergence measures: AUC over a window, steps to a threshold, the stage-1 shift (equal compute)."""

import pytest

from papers.disback.curves import auc, shift_for_stage1, steps_to_threshold, value_at


def test_auc_is_the_mean_over_the_window_by_the_trapezoid_rule():
    flat = [(0, 2.0), (10, 2.0), (20, 2.0)]
    assert auc(flat, 20) == pytest.approx(2.0)
    line = [(0, 4.0), (10, 2.0), (20, 0.0), (30, 0.0)]
    assert auc(line, 20) == pytest.approx(2.0)  # mean of a line from 4 to 0
    assert auc(line, 15) == pytest.approx((4.0 + 1.0) / 2)  # window end interpolated at 1.0
    assert auc(line, 10, start=20) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not the window"):
        auc(line, 40)


def test_faster_curve_has_smaller_auc_and_fewer_steps_to_threshold():
    slow = [(s, 5.0 * 0.9 ** (s / 10)) for s in range(0, 210, 10)]
    fast = [(s, 5.0 * 0.7 ** (s / 10)) for s in range(0, 210, 10)]
    assert auc(fast, 100) < auc(slow, 100)
    (a, ra), (b, rb) = steps_to_threshold(fast, 1.0), steps_to_threshold(slow, 1.0)
    assert ra and rb and a < b and a == 50.0  # 5 * 0.7^5 = 0.84 is the first value <= 1
    assert steps_to_threshold(slow, 0.01) == (201.0, False)  # censored after the last measured step


def test_stage1_shift_keeps_g0_during_stage1():
    curve = [(0, 6.0), (10, 3.0), (20, 1.0)]
    shifted = shift_for_stage1(curve, 25)
    assert shifted == [(0.0, 6.0), (25, 6.0), (35, 3.0), (45, 1.0)]
    assert value_at(shifted, 12.5) == 6.0
    assert auc(shifted, 45) > auc(curve, 20)  # paying for stage 1 can only raise the area
    assert steps_to_threshold(shifted, 1.0)[0] == steps_to_threshold(curve, 1.0)[0] + 25
    assert shift_for_stage1(curve, 0) == [(0.0, 6.0), (10.0, 3.0), (20.0, 1.0)]
    with pytest.raises(ValueError):
        shift_for_stage1(curve, -1)
