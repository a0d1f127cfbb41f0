"""Load test of the model server (benchmarks/serve_load.py is the command): `python -m peftlab.serve` started on a
free local port in a subprocess, N client threads sending one-input /v1/predict requests, bounded in requests and
in time so it always stops; per scenario the throughput, latency percentiles, errors, the mean batch the server
formed (from its /metrics) and its peak RSS. Scenarios: batching on and off with one adapter, and batching on with
K adapters over the one base: other runs' adapters of the same base when given, else the run's own adapter loaded K
times under K names. Either way the server's memory should grow by about the extra adapters' size, not by copies of
the base, and the report sets the one against the other."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import measure, rundir
from .errors import PeftlabError
from .measure import disk_bytes, human_bytes
from .recipe import recipe_from_dict
from .run_report import table

# one input per task, as /v1/predict takes it
SAMPLES = {"classification": "the film was moving and the acting was lovely",
           "regression": "A man is playing a guitar.\tA person plays an instrument.",
           "token_classification": "Alice flew from Paris to New York on Monday",
           "qa": {"question": "Where did Alice fly to?", "context": "Alice flew from Paris to New York on Monday."},
           "causal_lm": "What is 12 plus 7?"}


@dataclass(frozen=True)
class Scenario:
    name: str
    adapters: int
    max_batch: int


def scenarios(k: int) -> list[Scenario]:
    return [Scenario("batching on, 1 adapter", 1, 16), Scenario("batching off, 1 adapter", 1, 1)] + (
        [Scenario(f"batching on, {k} adapters", k, 16)] if k > 1 else [])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def extra_adapters(run: Path, k: int, others: list[Path]) -> list[Path]:
    """The runs whose adapters join the run's own in the K-adapter scenario."""
    return list(others) if others else [run] * (k - 1)


@contextlib.contextmanager
def running_server(run: Path, scenario: Scenario, window_ms: float, extra: list[Path], startup_s: float = 900):
    """The server of a scenario (the run, and the first adapters - 1 of `extra` beside it), up (its /health
    answers); yields (port, process); stopped on exit."""
    port = free_port()
    extra = [arg for i, other in enumerate(extra[:scenario.adapters - 1], 1) for arg in ("--adapter", f"a{i}={other}")]
    command = [sys.executable, "-m", "peftlab.serve", str(run), "--port", str(port), "--max-batch",
               str(scenario.max_batch), "--batch-window-ms", str(window_ms), *extra]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise PeftlabError(f"the server stopped at start-up: {log.read().decode()[-400:].strip()}")
                with contextlib.suppress(OSError):
                    if _get(port, "/health")[0] == 200:
                        break
                if time.monotonic() > deadline:
                    raise PeftlabError(f"the server did not answer /health within {startup_s:.0f} s")
                time.sleep(0.2)
            yield port, process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def status_bytes(pid: int, field: str) -> int | None:
    """A memory field of a running process's /proc status (Linux: VmHWM the peak RSS, VmRSS the RSS now), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def drive(port: int, names: list[str], row, clients: int, requests: int, seconds: float) -> list[tuple[float, bool]]:
    """(latency in seconds, answered 200) per request: `clients` threads, each with its own connection, until
    `requests` were sent or `seconds` passed; request i goes to adapter names[i % len(names)]."""
    numbers, results, lock = itertools.count(), [], threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                number = next(numbers)
            if number >= requests:
                break
            body = json.dumps({"adapter": names[number % len(names)], "inputs": [row]})
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
                reply = connection.getresponse()
                reply.read()
                ok = reply.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                ok = False
            with lock:
                results.append((time.perf_counter() - started, ok))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def summary(results: list[tuple[float, bool]], seconds: float) -> dict:
    latencies = np.array([latency for latency, _ in results]) * 1000
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if len(latencies) else (float("nan"),) * 3
    return {"requests": len(results), "errors": sum(not ok for _, ok in results), "seconds": seconds,
            "throughput_rps": len(results) / seconds, "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99)}


def batch_totals(metrics: str) -> np.ndarray:
    """(inputs, model calls) of /v1/predict so far, from the server's peftlab_batch_rows histogram (all adapters)."""
    from prometheus_client.parser import text_string_to_metric_families

    names = ["peftlab_batch_rows_sum", "peftlab_batch_rows_count"]
    return np.array([sum(s.value for family in text_string_to_metric_families(metrics) for s in family.samples
                         if s.name == name) for name in names])


def run_scenario(run: Path, scenario: Scenario, clients: int, requests: int, seconds: float,
                 window_ms: float, extra: list[Path]) -> dict:
    with running_server(run, scenario, window_ms, extra) as (port, process):
        health = json.loads(_get(port, "/health")[1])
        names = list(health["adapters"])
        row = SAMPLES[health["adapters"][names[0]]["task"]]
        drive(port, names, row, 1, len(names), 60)  # one request per adapter first: warm-up, not counted
        resident = status_bytes(process.pid, "VmRSS")  # loaded and warm, before the load
        before, started = batch_totals(_get(port, "/metrics")[1].decode()), time.perf_counter()
        results = drive(port, names, row, clients, requests, seconds)
        elapsed = time.perf_counter() - started
        rows, calls = batch_totals(_get(port, "/metrics")[1].decode()) - before
        return {"scenario": scenario.name, "adapters": scenario.adapters, "max_batch": scenario.max_batch,
                "clients": clients, **summary(results, elapsed),
                "mean_batch": rows / calls if calls else None, "rss_before_load_bytes": resident,
                "peak_rss_bytes": status_bytes(process.pid, "VmHWM")}


def adapter_bytes(run: Path) -> int | None:
    adapter = run / recipe_from_dict(rundir.read_json(run / "recipe.json")).method.saves
    return disk_bytes(adapter) if adapter.is_dir() else None


def load_test(run: Path, k: int, clients: int, requests: int, seconds: float, window_ms: float = 5,
              others: list[Path] = (), command: str = "") -> dict:
    """Every scenario's figures. `others`: other runs whose adapters make up the K-adapter scenario (K is then
    1 + their count), checked finished before anything starts."""
    run = rundir.require_finished(run)
    others = [rundir.require_finished(other) for other in others]
    k = 1 + len(others) if others else k
    extra = extra_adapters(run, k, others)
    weights = rundir.read_json(run / "metrics.json").get("memory", {}).get("model_state_bytes", {}).get("weights")
    return {"command": command, "environment": measure.environment(), "run": str(run),
            "adapter_bytes": adapter_bytes(run), "extra_adapters": [[str(r), adapter_bytes(r)] for r in extra],
            "model_weights_bytes": weights, "batch_window_ms": window_ms, "requests_per_scenario": requests,
            "seconds_per_scenario": seconds,
            "results": [run_scenario(run, s, clients, requests, seconds, window_ms, extra) for s in scenarios(k)]}


def memory_growth(record: dict) -> str | None:
    """The K-adapter server's RSS against the one-adapter server's (both batching on): loaded and warm before the
    load, and at its peak under load; beside the extra adapters' size and the model's weights."""
    one, many = record["results"][0], record["results"][-1]
    if many["adapters"] == 1 or not (one["peak_rss_bytes"] and many["peak_rss_bytes"]):
        return None
    extra = sum(size or 0 for _, size in record["extra_adapters"])
    model = record.get("model_weights_bytes")
    before = (f"RSS once loaded and warm by {human_bytes(many['rss_before_load_bytes'] - one['rss_before_load_bytes'])}"
              ", " if one.get("rss_before_load_bytes") and many.get("rss_before_load_bytes") else "")
    return (f"Serving {many['adapters']} adapters instead of 1 raised the server's {before}peak RSS under load by "
            f"{human_bytes(many['peak_rss_bytes'] - one['peak_rss_bytes'])}; the {many['adapters'] - 1} extra "
            f"adapters are {human_bytes(extra)} on disk" + (f", the model's weights {human_bytes(model)}" if model else "")
            + " (the peak also moves with the batches each scenario happened to form).")


def report(record: dict) -> str:
    extra = record.get("extra_adapters", [])
    others = sorted({r for r, _ in extra} - {record["run"]})
    lines = ["# Model server under load", "",
             f"Run `{record['run']}` served by `python -m peftlab.serve`; each scenario sends one-input /v1/predict "
             f"requests from concurrent clients until {record['requests_per_scenario']} requests or "
             f"{record['seconds_per_scenario']:.0f} s (batch window {record['batch_window_ms']} ms); requests go to "
             f"the adapters in turn. The adapter is {human_bytes(record['adapter_bytes'])} on disk; the K-adapter "
             "scenario adds " + (", ".join(f"`{r}`" for r in others) if others else "the same adapter K - 1 times")
             + ".", "",
             "| scenario | clients | requests | errors | throughput (req/s) | p50 ms | p95 ms | p99 ms | mean batch | "
             "server RSS loaded | server peak RSS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        batch = "n/a" if r["mean_batch"] is None else f"{r['mean_batch']:.2f}"
        lines.append(f"| {r['scenario']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{batch} | {human_bytes(r.get('rss_before_load_bytes'))} | {human_bytes(r['peak_rss_bytes'])} |")
    growth = memory_growth(record)
    lines += ["", growth] if growth else []
    if "environment" in record:
        env = record["environment"]
        lines += ["", "## Command and environment", "", f"```\n{record['command']}\n```", "", table(
            ["item", "value"],
            [["hardware", f"{env['cpu']} ({env['cpu_count']} cores), GPU: {env['gpu'] or 'none'}"],
             ["versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)],
             ["peftlab commit", env.get("peftlab_commit")],
             ["machine load (1-min average at start)", f"{env['load_average_at_start']:.1f}"]])]
    return "\n".join(lines) + "\n"


def write(record: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    markdown, data = out / "serve_load.md", out / "serve_load.json"
    rundir.write_json(data, record)
    rundir.write_atomic(markdown, report(record))
    return markdown, data
