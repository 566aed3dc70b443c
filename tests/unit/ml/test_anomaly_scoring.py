"""The anomaly benchmark's metrics on tiny hand-made label and flag arrays with known answers."""

import numpy as np
import pytest

from benchmarks.anomaly_scoring import (
    STANDARD,
    Totals,
    detection_delays,
    event_delay,
    intervals,
    nab_normalised,
    nab_score,
    nab_windows,
    probation_length,
    scaled_sigmoid,
    score_series,
)

N = 100  # probation 15 points; one anomaly -> a 10-point window


def labels_with(*runs: tuple[int, int], n: int = N) -> np.ndarray:
    labels = np.zeros(n, dtype=bool)
    for start, end in runs:
        labels[start:end] = True
    return labels


def flags_at(*indices: int, n: int = N) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[list(indices)] = True
    return flags


def normalised(labels: np.ndarray, flags: np.ndarray) -> float:
    parts = nab_score(labels, flags)
    score = nab_normalised(parts.raw, parts.windows)
    assert score is not None
    return score


LABELS = labels_with((50, 55))  # window [48, 57]: 5 points extended by 2 on the left, 3 on the right


def test_intervals_are_the_runs_of_true_with_exclusive_ends():
    assert intervals(labels_with((0, 2), (5, 6), (98, 100))) == [(0, 2), (5, 6), (98, 100)]
    assert intervals(np.zeros(4, dtype=bool)) == []


def test_scaled_sigmoid_matches_nab_at_its_landmarks():
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.0) == -1.0


def test_probation_is_15_percent_capped_at_750_points():
    assert probation_length(100) == 15
    assert probation_length(100_000) == 750


def test_a_short_interval_is_extended_to_the_nab_window_length_around_itself():
    assert nab_windows(LABELS) == [(48, 57)]


def test_an_interval_longer_than_the_nab_window_is_its_own_window():
    assert nab_windows(labels_with((40, 70))) == [(40, 69)]


def test_a_window_in_the_probationary_period_is_dropped():
    assert nab_windows(labels_with((10, 12))) == []


def test_overlapping_windows_merge():
    # two anomalies -> 5-point windows: [28, 32] and [31, 35] overlap
    assert nab_windows(labels_with((30, 31), (33, 34))) == [(28, 35)]


def test_perfect_detector_scores_100_and_null_detector_0():
    assert normalised(LABELS, flags_at(48)) == pytest.approx(100.0)
    assert normalised(LABELS, np.zeros(N, dtype=bool)) == pytest.approx(0.0)


def test_a_late_detection_scores_less_than_an_early_one():
    early = normalised(LABELS, flags_at(50))
    late = normalised(LABELS, flags_at(56))
    assert 100.0 > early > late > 0.0


def test_only_the_first_detection_in_a_window_counts():
    assert normalised(LABELS, flags_at(*range(48, 58))) == pytest.approx(100.0)
    assert normalised(LABELS, flags_at(52, 48)) == pytest.approx(100.0)


def test_a_false_positive_lowers_the_score_by_a_fp():
    # before any window a false positive costs the full A_fp = 0.11: raw 1 - 0.11 of a range of 2
    assert normalised(LABELS, flags_at(48, 20)) == pytest.approx(100 * (1 - 0.11 + 1) / 2)


def test_a_false_positive_just_after_a_window_costs_less_than_a_distant_one():
    near = normalised(LABELS, flags_at(48, 58))
    far = normalised(LABELS, flags_at(48, 90))
    assert 100.0 > near > far


def test_flags_in_the_probationary_period_are_not_scored():
    assert normalised(LABELS, flags_at(3, 10)) == pytest.approx(0.0)


def test_normalisation_sums_raw_scores_over_a_data_set():
    perfect = nab_score(LABELS, flags_at(48))
    null = nab_score(LABELS, np.zeros(N, dtype=bool))
    assert nab_normalised(perfect.raw + null.raw, perfect.windows + null.windows) == pytest.approx(50.0)
    assert nab_normalised(0.0, 0) is None


def test_a_series_without_anomalies_only_loses_points_for_flags():
    parts = nab_score(np.zeros(N, dtype=bool), flags_at(40, 41))
    assert parts.windows == 0
    assert parts.raw == pytest.approx(-2 * STANDARD.fp)


def test_detection_delay_is_seconds_from_interval_start_to_its_first_flag():
    ts = np.arange(N, dtype=np.int64) * 10_000  # 10 s steps
    labels = labels_with((20, 30), (60, 70))
    assert detection_delays(ts, labels, flags_at(23, 25, 50)) == [30.0, None]


def test_point_counts_and_precision_recall_f1():
    ts = np.arange(10, dtype=np.int64) * 1000
    labels = labels_with((2, 6), n=10)  # 4 anomalous points
    flags = flags_at(3, 4, 8, n=10)  # 2 hits, 1 false alarm, 2 missed
    result = score_series("s", ts, labels, flags, warmup=1, seconds=0.5, values=10)
    assert (result.tp, result.fp, result.fn) == (2, 1, 2)
    summary = Totals.of([result]).summary()
    assert summary["precision"] == pytest.approx(2 / 3)
    assert summary["recall"] == pytest.approx(0.5)
    assert summary["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert summary["intervals_detected"] == 1
    assert summary["mean_delay_s"] == pytest.approx(1.0)
    assert summary["values_per_s"] == pytest.approx(20.0)


def test_totals_pool_series_before_dividing():
    ts = np.arange(10, dtype=np.int64)
    a = score_series("a", ts, labels_with((0, 5), n=10), flags_at(0, n=10), warmup=0, seconds=1, values=10)
    b = score_series("b", ts, labels_with(n=10), flags_at(1, 2, 3, n=10), warmup=0, seconds=1, values=10)
    summary = Totals.of([a, b]).summary()
    assert summary["precision"] == pytest.approx(1 / 4)
    assert summary["recall"] == pytest.approx(1 / 5)


def test_no_flags_at_all_gives_no_precision_and_zero_f1():
    ts = np.arange(10, dtype=np.int64)
    r = score_series("a", ts, labels_with((0, 5), n=10), flags_at(n=10), warmup=0, seconds=1, values=10)
    summary = Totals.of([r]).summary()
    assert summary["precision"] is None
    assert summary["f1"] == 0.0


def test_event_delay_looks_only_inside_the_event():
    ts = np.arange(N, dtype=np.int64) * 1000
    flags = flags_at(5, 42)
    assert event_delay(ts, flags, 40_000, 50_000) == 2.0
    assert event_delay(ts, flags, 10_000, 20_000) is None


def test_nab_scores_the_reported_onsets_and_the_point_counts_the_flags():
    ts = np.arange(N, dtype=np.int64) * 1000
    flags = flags_at(*range(48, 58), 20, 21, 22)
    onsets = flags_at(48, 20)  # one reported anomaly per episode of flags
    result = score_series("s", ts, LABELS, flags, warmup=0, seconds=1, values=N, reported=onsets)
    assert (result.tp, result.fp) == (5, 8)
    assert result.nab.false_positives == 1
    assert nab_normalised(result.nab.raw, result.nab.windows) == pytest.approx(100 * (1 - 0.11 + 1) / 2)
