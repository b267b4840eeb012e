"""A short soak (`python -m bench.soak --seconds 15`): the mixed load runs clean and leaves nothing open.

The full soak (`make soak`, minutes) judges flatness; this one is too short for RSS to settle, so
it checks what must hold at any length: every request answered as expected (bad tokens with 401,
nothing else failing), samples taken all along, and after the load no open stream, with file
descriptors and upstream connections back near where they started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.soak import IDLE_KEEPALIVE

SECONDS = 15
ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_runs_clean_and_returns_to_its_baseline(tmp_path: Path) -> None:
    report, figures_path = tmp_path / "SOAK.md", tmp_path / "soak.json"
    args = [sys.executable, "-m", "bench.soak", "--seconds", str(SECONDS), "--report", str(report)]
    done = subprocess.run(
        [*args, "--json", str(figures_path)], cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 75
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: not flat, judged below where it matters
    figures = json.loads(figures_path.read_text())
    assert "## Verdict" in report.read_text()

    tally = figures["tally"]
    assert tally["errors"] == {}
    assert set(tally["ok"]) == {"json 200", "bad token 401", "stream complete", "stream dropped"}
    assert min(tally["ok"].values()) > 0

    samples = figures["samples"]
    assert len(samples) >= SECONDS // 2 - 1
    assert all(sample["rss_kib"] > 0 and sample["fds"] > 0 for sample in samples)
    assert max(sample["open_streams"] for sample in samples) > 0

    before, after = figures["before"], figures["after"]
    assert after["open_streams"] == 0
    assert after["fds"] <= before["fds"] + IDLE_KEEPALIVE
    assert after["upstream_connections"] <= before["upstream_connections"] + IDLE_KEEPALIVE
