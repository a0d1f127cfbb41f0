"""The load test's figures (peftlab/load_test.py) from given latencies and a real metrics page; the run end to end
(servers in subprocesses) is benchmarks/serve_load.py's, not a unit test's."""

from __future__ import annotations

import pytest

from peftlab import load_test, serving


def test_summary_counts_errors_and_takes_percentiles():
    results = [(i / 1000, i % 10 != 0) for i in range(1, 101)]  # 1..100 ms, every tenth failed
    figures = load_test.summary(results, seconds=4.0)
    assert figures["requests"] == 100 and figures["errors"] == 10 and figures["throughput_rps"] == 25
    assert figures["p50_ms"] == pytest.approx(50.5) and figures["p99_ms"] == pytest.approx(99.01)


def test_batch_totals_read_the_servers_histogram():
    metrics = serving.Metrics()
    metrics.batched("a", 3, [0.01, 0.02])
    metrics.batched("b", 1, [0.01])
    metrics.batched("a", 4, [0.0])
    assert load_test.batch_totals(metrics.text().decode()).tolist() == [8, 3]


def test_report_has_a_row_per_scenario():
    row = {"adapters": 1, "clients": 4, "requests": 10, "errors": 1, "throughput_rps": 2.5, "p50_ms": 1, "p95_ms": 2, "p99_ms": 3,
           "mean_batch": None, "rss_before_load_bytes": 2 << 20, "peak_rss_bytes": 3 << 20}
    record = {"run": "runs/x", "adapter_bytes": 2048, "extra_adapters": [["runs/x", 2048]] * 2, "batch_window_ms": 5, "requests_per_scenario": 10,
              "seconds_per_scenario": 30, "results": [row | {"scenario": s.name} for s in load_test.scenarios(3)]}
    text = load_test.report(record)
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| batching")] == [
        "| batching on, 1 adapter", "| batching off, 1 adapter", "| batching on, 3 adapters"]
    assert "| 4 | 10 | 1 | 2.5 | 1.0 | 2.0 | 3.0 | n/a | 2.00 MiB | 3.00 MiB |" in text and "2.00 KiB on disk" in text


def test_the_k_adapter_scenario_takes_other_runs_or_repeats_the_run(tmp_path):
    run, other = tmp_path / "a", tmp_path / "b"
    assert load_test.extra_adapters(run, 3, []) == [run, run]
    assert load_test.extra_adapters(run, 3, [other]) == [other]


def test_memory_growth_sets_the_rss_rise_against_the_extra_adapters():
    one = {"adapters": 1, "rss_before_load_bytes": 900 << 20, "peak_rss_bytes": 1000 << 20}
    many = {"adapters": 3, "rss_before_load_bytes": 906 << 20, "peak_rss_bytes": 1010 << 20}
    record = {"results": [one, one, many], "extra_adapters": [["b", 3 << 20], ["c", 2 << 20]],
              "model_weights_bytes": 500 << 20}
    line = load_test.memory_growth(record)
    assert "3 adapters instead of 1" in line and "warm by 6.00 MiB" in line and "load by 10.00 MiB" in line and "adapters are 5.00 MiB" in line
    assert "model's weights 500.00 MiB" in line
    assert load_test.memory_growth({"results": [one, one], "extra_adapters": []}) is None
