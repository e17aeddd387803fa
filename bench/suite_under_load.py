"""The test suite under load: pytest N times beside busy processes, to show it never flakes.

Starts --busy processes that multiply matrices with torch's default threads (bounded by
--busy-seconds, and stopped when the runs end), then runs `python -m pytest` (the whole suite,
or the paths and flags given after `--`) --runs times in a row. Each run's counts come from its
JUnit XML; the load average is os.getloadavg()'s 1-minute figure sampled every 5 s during the run.

Run: python -m bench.suite_under_load [--runs 3] [--busy 2] [-- tests/browser tests/app]
Prints one Markdown table; exits 1 when any run had a failure or an error.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.common import table

REPO = Path(__file__).resolve().parent.parent

# A busy process: square matrix products with torch's default thread count until its time is up.
BUSY = """
import sys, time, torch
end = time.monotonic() + float(sys.argv[1])
a = torch.randn(1024, 1024)
while time.monotonic() < end:
    a = torch.tanh(a @ a)
"""


def start_busy(count: int, seconds: float) -> list[subprocess.Popen]:
    """`count` busy processes, each in a session of its own (stopped by its process group at the end)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY, str(seconds)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop the processes this script started (their own groups only), waiting for each."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def counts(junit: Path) -> dict[str, int]:
    """passed, failed, errors, skipped of a JUnit XML report (pytest's --junitxml)."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def failed_names(junit: Path) -> list[str]:
    """classname::name of every failed or erroring test case."""
    return [f"{case.get('classname')}::{case.get('name')}" for case in ET.parse(junit).getroot().iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None]


def run_once(pytest_args: list[str], folder: Path, index: int) -> tuple[dict[str, int], float, list[float], list[str]]:
    """One pytest run: its counts, its seconds, the load averages sampled during it, the failed tests."""
    junit = folder / f"run{index}.xml"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(5.0):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           *pytest_args], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    loads.append(os.getloadavg()[0])
    if not junit.exists():
        raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return counts(junit), seconds, loads, failed_names(junit)


def main() -> int:
    argv = sys.argv[1:]
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="pytest runs, one after the other")
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the runs")
    parser.add_argument("--busy-seconds", type=float, default=4 * 3600, help="upper bound on each busy process")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    busy = start_busy(args.busy, args.busy_seconds)
    rows, failures = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="suite-under-load-") as tmp:
            for i in range(1, args.runs + 1):
                n, seconds, loads, failed = run_once(pytest_args, Path(tmp), i)
                rows.append([i, n["passed"], n["failed"], n["errors"], n["skipped"], seconds,
                             statistics.mean(loads), max(loads)])
                failures += [f"run {i}: {name}" for name in failed]
                print(f"run {i}: {n} in {seconds:.0f} s", file=sys.stderr, flush=True)
    finally:
        stop(busy)
    print(f"pytest {' '.join(pytest_args) or '(whole suite)'}, {args.runs} runs beside {args.busy} busy processes "
          f"(torch matmul, default threads), {os.cpu_count()} CPUs\n")
    print(table(["run", "passed", "failed", "errors", "skipped", "seconds", "load avg (mean)", "load avg (max)"], rows))
    for line in failures:
        print(f"- failed: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
