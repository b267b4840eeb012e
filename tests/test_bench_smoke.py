"""The benchmark harness runs (tiny counts); its figures are checked for shape, never for speed."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import main


def test_bench_quick_run_writes_the_report(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--output", str(output)]) == 0
    report = output.read_text()
    assert "| RS256 (2048-bit), cold |" in report and "| cached (any algorithm) |" in report
