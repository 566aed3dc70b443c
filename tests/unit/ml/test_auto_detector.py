"""The `auto` detector on seeded synthetic series with known anomalies: what it flags at the default
sensitivity, what it leaves alone, and the exactness of its streaming state."""

import numpy as np
import pytest

from services.ml.detectors import auto
from services.ml.detectors.base import DEFAULT_SENSITIVITY, TooShort, threshold_for

THRESHOLD = threshold_for(DEFAULT_SENSITIVITY)
EDGE = threshold_for(0.99)
"""The band edge (deviation 1.06): slow ramps and louder noise are judged there; at the default a
ramp's drift score peaks near the default threshold (docs/anomalies.md)."""
BASELINE = 1500  # points before an injected change: the window is full and settled


def flags(values: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    return auto.detect(np.arange(len(values), dtype=np.int64), values).score >= threshold


def first_flag_after(values: np.ndarray, start: int, threshold: float = THRESHOLD) -> int | None:
    hits = np.flatnonzero(flags(values, threshold)[start:])
    return int(hits[0]) if hits.size else None


def noise(seed: int, n: int, sigma: float = 1.0, level: float = 0.0) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0.0, sigma, n)


def daily_sine(seed: int, n: int, period: int) -> np.ndarray:
    return 50.0 + 10.0 * np.sin(2 * np.pi * np.arange(n) / period) + noise(seed, n)


def with_spikes(values: np.ndarray, seed: int, count: int, sigmas: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    at = np.sort(rng.choice(np.arange(5, len(values) // 40) * 40, count, replace=False))  # 40 apart, from 200
    spiked = values.copy()
    spiked[at] += sigmas * rng.choice([-1.0, 1.0], count)
    return spiked, at


# What it flags


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_six_sigma_spikes_on_noise_are_flagged(seed):
    values, at = with_spikes(noise(seed, 20_000, sigma=2.0, level=10.0), seed, 60, 6 * 2.0)
    assert flags(values)[at].mean() >= 0.9


def test_eight_sigma_spikes_on_a_daily_sine_are_flagged():
    values, at = with_spikes(daily_sine(4, 20_000, period=288), 4, 60, 8.0)
    assert flags(values)[at].mean() >= 0.9


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_level_shift_is_flagged_at_its_start(seed):
    values = noise(seed, BASELINE + 500)
    values[BASELINE:] += 4.0
    delay = first_flag_after(values, BASELINE)
    assert delay is not None and delay <= 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_small_sustained_shift_is_flagged_within_a_short_window(seed):
    values = noise(seed, BASELINE + 500)
    values[BASELINE:] += 1.5  # inside the point band: the drift component's job
    delay = first_flag_after(values, BASELINE)
    assert delay is not None and delay <= auto.SHORT_WINDOW + 6


@pytest.mark.parametrize("seed", range(6))
def test_a_memory_leak_is_flagged_long_before_half_way(seed):
    # 30 units over 3 hours of 10-second samples, on noise of sigma 1.5.
    ramp_points = 1080
    values = noise(seed, BASELINE + ramp_points, sigma=1.5, level=500.0)
    values[BASELINE:] += np.arange(ramp_points) * 30.0 / ramp_points
    delay = first_flag_after(values, BASELINE, EDGE)
    assert delay is not None and delay < ramp_points // 4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_louder_noise_is_flagged(seed):
    values = noise(seed, BASELINE + 300)
    values[BASELINE:] *= 4.0
    after = flags(values, EDGE)[BASELINE:]
    assert after[:5].any() and after[:100].mean() > 0.2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stuck_sensor_is_flagged(seed):
    values = noise(seed, BASELINE + 300, level=20.0)
    values[BASELINE:] = 20.0 + (values[BASELINE:] - 20.0) * 0.02
    delay = first_flag_after(values, BASELINE)
    assert delay is not None and delay <= auto.SHORT_WINDOW + 6


def test_a_jump_off_a_constant_series_scores_high_and_the_constant_part_zero():
    values = np.full(2000, 42.0)
    values[1500:] = 43.0
    score = auto.detect(np.arange(2000), values).score
    assert np.all(score[:1500] == 0.0)
    assert score[1500] > 0.99


# What it leaves alone


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gaussian_noise_is_rarely_flagged(seed):
    assert flags(noise(seed, 20_000, sigma=3.0, level=100.0)).mean() < 0.005


@pytest.mark.parametrize("period", [288, 1440])  # a day of 5-minute and of 1-minute samples
def test_a_smooth_daily_sine_with_noise_is_rarely_flagged(period):
    assert flags(daily_sine(period, 20_000, period)).mean() < 0.005


def test_a_random_walk_and_discrete_counts_are_rarely_flagged():
    rng = np.random.default_rng(7)
    assert flags(np.cumsum(rng.normal(0.0, 1.0, 20_000))).mean() < 0.01
    assert flags(rng.poisson(3.0, 20_000).astype(float)).mean() < 0.005


def test_tiny_noise_on_a_constant_does_not_alarm():
    values = 100.0 + noise(5, 5000, sigma=1e-9)
    assert auto.detect(np.arange(5000), values).score.max() < 0.01


# Shape of the output


def test_scores_lie_in_0_1_and_the_band_holds_the_expected_value():
    values, _ = with_spikes(daily_sine(6, 5000, 288), 6, 20, 20.0)
    scores = auto.detect(np.arange(5000), values)
    assert np.all((scores.score >= 0.0) & (scores.score <= 1.0))
    assert scores.warmup == auto.WARMUP_POINTS
    assert np.all(scores.score[: auto.WARMUP_POINTS] == 0.0)
    assert np.isnan(scores.expected[: auto.WARMUP_POINTS]).all()
    done = slice(auto.WARMUP_POINTS, None)
    assert np.all(scores.lower[done] < scores.expected[done])
    assert np.all(scores.expected[done] < scores.upper[done])


def test_the_band_is_about_three_sigma_on_gaussian_noise():
    scores = auto.detect(np.arange(5000), noise(8, 5000, sigma=2.0))
    half = np.median((scores.upper - scores.lower)[1000:]) / 2
    assert 5.5 < half < 7.5


def test_a_short_series_is_refused():
    with pytest.raises(TooShort):
        auto.detect(np.arange(auto.MIN_POINTS - 1), np.zeros(auto.MIN_POINTS - 1))
    assert auto.MIN_POINTS == auto.WARMUP_POINTS + 1


def test_warmup_counts_the_chunks_points_in_warmup():
    state = auto.AutoState.new()
    values = noise(9, 100)
    assert auto.score_chunk(state, np.arange(30), values[:30]).warmup == 30
    assert auto.score_chunk(state, np.arange(30, 60), values[30:60]).warmup == auto.WARMUP_POINTS - 30
    assert auto.score_chunk(state, np.arange(60, 100), values[60:]).warmup == 0


def test_a_missing_value_scores_0_and_leaves_the_state_alone():
    values = noise(10, 1000)
    with_gap = values.copy()
    with_gap[700] = np.nan
    plain, gapped = auto.AutoState.new(), auto.AutoState.new()
    auto.score_chunk(plain, np.arange(700), values[:700])
    scores = auto.score_chunk(gapped, np.arange(701), with_gap[:701])
    assert scores.score[700] == 0.0 and np.isnan(scores.expected[700])
    assert np.array_equal(plain.buf, gapped.buf)


# Streaming exactness


def series_kinds() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    spiky, _ = with_spikes(noise(11, 3000), 11, 10, 9.0)
    discrete = np.round(rng.normal(5.0, 2.0, 3000)) * 0.1
    flat_with_signed_zero = np.where(rng.random(3000) < 0.9, 7.0, -0.0)
    return [spiky, discrete, np.cumsum(rng.normal(0.0, 1.0, 3000)), flat_with_signed_zero]


@pytest.mark.parametrize("kind", range(4))
def test_any_chunking_gives_bit_identical_scores_and_state(kind):
    values = series_kinds()[kind]
    ts = np.arange(len(values), dtype=np.int64)
    whole_state = auto.AutoState.new()
    whole = auto.score_chunk(whole_state, ts, values)
    rng = np.random.default_rng(kind)
    cuts = np.unique(np.r_[rng.integers(1, len(values), 60), np.arange(40, 60), len(values)])
    state, parts, start = auto.AutoState.new(), [], 0
    for end in cuts:
        parts.append(auto.score_chunk(state, ts[start:end], values[start:end]))
        start = end
    for field in ("score", "expected", "lower", "upper"):
        joined = np.concatenate([getattr(p, field) for p in parts])
        assert np.array_equal(joined, getattr(whole, field), equal_nan=True), field
    assert sum(p.warmup for p in parts) == whole.warmup
    assert state.to_bytes() == whole_state.to_bytes()


@pytest.mark.parametrize("kind", range(4))
def test_replaying_the_last_memory_points_rebuilds_the_state(kind):
    values = series_kinds()[kind]
    ts = np.arange(len(values), dtype=np.int64)
    cut = 2000
    seen_all, replayed = auto.AutoState.new(), auto.AutoState.new()
    auto.score_chunk(seen_all, ts[:cut], values[:cut])
    auto.score_chunk(replayed, ts[cut - auto.MEMORY_POINTS : cut], values[cut - auto.MEMORY_POINTS : cut])
    assert replayed.to_bytes() == seen_all.to_bytes()
    rest_all = auto.score_chunk(seen_all, ts[cut:], values[cut:])
    rest_replayed = auto.score_chunk(replayed, ts[cut:], values[cut:])
    assert np.array_equal(rest_all.score, rest_replayed.score)
    assert np.array_equal(rest_all.upper, rest_replayed.upper)


def test_a_checkpoint_round_trips_exactly_and_resumes_the_same():
    values = noise(12, 1500)
    ts = np.arange(1500, dtype=np.int64) * 10_000
    state = auto.AutoState.new()
    auto.score_chunk(state, ts[:1000], values[:1000])
    restored = auto.AutoState.from_bytes(state.to_bytes())
    assert restored.to_bytes() == state.to_bytes()
    assert restored.last_ts == int(ts[999]) and restored.count == auto.MEMORY_POINTS
    assert np.array_equal(
        auto.score_chunk(restored, ts[1000:], values[1000:]).score,
        auto.score_chunk(state, ts[1000:], values[1000:]).score,
    )
    assert auto.AutoState.from_bytes(auto.AutoState.new().to_bytes()).last_ts is None
    with pytest.raises(ValueError):
        auto.AutoState.from_bytes(state.to_bytes()[:-8])


def test_the_state_is_small_and_the_same_size_for_every_series():
    fresh, used = auto.AutoState.new(), auto.AutoState.new()
    auto.score_chunk(used, np.arange(3000), noise(13, 3000))
    assert fresh.nbytes == used.nbytes < 16 * 1024
    assert len(used.to_bytes()) == len(fresh.to_bytes())
