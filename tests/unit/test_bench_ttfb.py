"""bench/ttfb.py's summary: the paired figure is the median of per-round differences, not a difference of
overall medians (a slow round falls on both targets alike)."""

from __future__ import annotations

import math

from pytest import approx

from bench.ttfb import summarize


def test_the_paired_figure_is_the_median_of_round_differences() -> None:
    samples = {"direct": [0.001, 0.002, 0.003], "proxy": [0.0015, 0.0026, 0.0041]}
    # round 3 was slow for both (9 and 9.5 ms): the pairs differ by 0.5, 0.6, 0.5 ms; the overall p50s by 0.6
    per_round = {"direct": [1.0, 2.0, 9.0], "proxy": [1.5, 2.6, 9.5]}
    out = summarize(["direct", "proxy"], samples, per_round, {"direct": 0, "proxy": 1})
    assert out["proxy"]["paired_p50_ms"] == approx(0.5)  # median of 0.5, 0.6, 0.5
    assert "paired_p50_ms" not in out["direct"]
    assert out["direct"]["p50_ms"] == approx(2.0) and out["proxy"]["p50_ms"] == approx(2.6)
    assert out["proxy"]["p99_ms"] == approx(4.1) and out["proxy"]["samples"] == 3 and out["proxy"]["errors"] == 1
    assert out["proxy"]["round_p50_ms"] == [1.5, 2.6, 9.5]


def test_no_samples_give_nan_not_an_error() -> None:
    out = summarize(["a", "b"], {"a": [], "b": []}, {"a": [], "b": []}, {"a": 0, "b": 0})
    assert math.isnan(out["a"]["p50_ms"]) and math.isnan(out["b"]["paired_p50_ms"])
