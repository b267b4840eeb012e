"""The benchmark harness runs end to end (tiny counts); its figures are checked for shape, never for speed."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import main


def test_bench_quick_run_measures_every_subject_and_writes_the_report(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--output", str(output)]) == 0
    report = output.read_text()
    for section in (
        "## Summary",
        "## Small authenticated JSON POST",
        "## SSE",
        "## Many open streams",
        "## Several workers",
    ):
        assert section in report
    for subject in ("| direct |", "| nginx |", "| gateway |"):
        assert subject in report
    assert "| 1 | 4 |" in report and "| 2 | 4 |" in report  # one worker, then two
    # Many open streams: every subject, the two-worker gateway, and the memory kept after they end.
    assert "| gateway, 2 workers | 20 | 20 |" in report and "RSS kept 2 s after" in report
    assert "| RS256 (2048-bit), cold |" in report and "## First request after start" in report
    assert "## Measured design choices" in report
    assert "## What each feature costs" in report and "| tracing on," in report
    assert "## What thread ownership costs" in report and "| sqlite |" in report and "| redis |" in report
