"""The async benchmark's smoke run: ``benchmarks/bench_async.py --quick`` against real servers.

Not a timed test: it checks that the script starts its servers, runs every
side that this build has, checks their results and prints its tables, and
that no side fails. The figures it prints are not looked at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cacheorm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_async.py"


def test_quick_run_prints_every_table() -> None:
    for binary in ("redis-server", "redis-cli", "memcached"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (the benchmark starts its own servers)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
        env=env,
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    assert "FAILED" not in out, out
    assert "left running" not in out, out
    for title in ("Redis, one server", "Redis Cluster, 3 masters", "Memcached, one server"):
        assert f"### {title} — " in out, out
    # one row per concurrency and operation, with the baseline's figures in it
    for concurrency in (1, 16, 64, 256):
        for op in ("get", "create"):
            assert f"\n| {concurrency} | {op} | " in out, out
    assert "### get_many of 100 keys, one task" in out, out
    assert "### Targets" in out, out
    if hasattr(cacheorm, "AsyncRepository"):  # the contenders ran, and were compared
        assert "cacheorm speedup" in out, out
        assert "- none measured" not in out, out
