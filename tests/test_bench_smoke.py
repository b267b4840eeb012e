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
    # Every subject's SSE rows give the events once all streams were open a figure of their own.
    sse = report.split("## SSE", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in sse.splitlines() if line.startswith("| subject |"))
    column = [cell.strip() for cell in header.strip("|").split("|")].index("added p99 ms, all open")
    rows = [line for line in sse.splitlines() if line.startswith(("| direct |", "| nginx |", "| gateway |"))]
    assert len(rows) == 6
    for line in rows:
        float(line.strip("|").split("|")[column])  # a number, not "–": such events were measured


def test_events_once_all_streams_are_open_are_those_sent_after_the_last_first_event() -> None:
    from bench.load import StreamStats

    # Two streams; the second's first event arrived at t = 2.0 s. Events sent at or before then were
    # queued behind the openings; the two sent after it are the open streams' relay.
    stats = StreamStats(
        latencies_ns=[9_000_000, 8_000_000, 7_000_000, 1_000_000, 2_000_000],
        sent_ns=[1_000_000_000, 1_500_000_000, 2_000_000_000, 2_500_000_000, 3_000_000_000],
        first_event_at=[1.001, 2.0],
    )
    assert stats.once_all_open() == [1_000_000, 2_000_000]
    assert StreamStats().once_all_open() == []


def test_the_cpu_profile_is_split_by_the_innermost_frame_that_names_a_part() -> None:
    from bench.cpuprofile import parts

    read = "Runner.run (asyncio/runners.py:118);GatewayHttpProtocol.data_received (gateway/protocol.py:545)"
    uvicorn = "uvicorn/protocols/http/httptools_impl.py"
    answer = f"RequestResponseCycle.run_asgi ({uvicorn}:420);relay_body (gateway/relay.py:240)"
    collapsed = "\n".join(
        [
            f"{read} 300",  # the read callback's own samples: the recv and the loop before it
            f"{read};HttpToolsProtocol.on_header ({uvicorn}:242) 100",
            f"{answer};_OneWriteCycle._write_body (gateway/protocol.py:170) 400",
            f"{answer};Observer.finish (gateway/observe.py:200);Histogram.observe (prometheus_client/x.py:600) 150",
            f"{answer} 30",  # the relay's own code
            "_run_module_as_main (<frozen runpy>:198) 20",  # nothing of the gateway's
        ]
    )
    shares = dict(parts(collapsed))
    assert shares == {
        "write() to the client": 0.4,
        "the client's bytes in (recv, llhttp)": 0.3,
        "metrics, the access record": 0.15,
        "uvicorn's request machinery, the task, the ASGI entry": 0.1,
        "the endpoint, the answer, the relay": 0.03,
        "other": 0.02,
    }
    largest = [name for name, _ in parts(collapsed)][:2]
    assert largest == ["write() to the client", "the client's bytes in (recv, llhttp)"]
