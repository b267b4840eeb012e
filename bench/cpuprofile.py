"""`python -m bench.cpuprofile OUT -- serve ...`: the gateway, sampled on its own CPU time.

py-spy samples on the wall clock and counts a thread as busy while it is runnable; on a machine
whose cores are all taken (the load generator, the upstream and the gateway on 2 cores), a
gateway preempted right after a `write()` that woke its peer is "busy" in that `write()` until it
runs again, so socket writes look several times dearer than the CPU they use. This sampler asks
the kernel for a signal per millisecond of the process's own CPU time (`ITIMER_PROF`, user +
system), so a sample is CPU spent, and records the Python stack it interrupts, weighed by the CPU
time since the previous sample. Time in C (a syscall, a C extension) lands on the Python line that
called it; time in the event loop's own C code, on the Python callback it runs next.

The collapsed stacks (`frame;frame;... count`, as flamegraph.pl and speedscope read them) are
written to OUT-0, OUT-1, ... on each `SIGUSR1` and at exit (what was sampled since the previous
write), so one process can be sampled under several loads in turn. `python -m bench.cpuprofile svg
STACKS OUT.svg TITLE` draws a flame graph of such a file.
"""

from __future__ import annotations

import collections
import re
import signal
import sys
import time
import zlib
from collections.abc import Iterator
from html import escape
from pathlib import Path
from types import FrameType
from typing import Any

INTERVAL = 0.001
LINE_NUMBER = re.compile(r":\d+\)$")


class Sampler:
    def __init__(self, output: Path) -> None:
        self.output = output
        self.stacks: collections.Counter[str] = collections.Counter()
        self.part = 0
        self.last = time.process_time()

    def sample(self, signum: int, frame: FrameType | None) -> None:
        # Signals that arrive while C code runs are delivered as one when Python runs again: the
        # sample weighs the CPU time since the last one (in microseconds), not one tick.
        now = time.process_time()
        weight, self.last = round((now - self.last) * 1e6), now
        names = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{code.co_qualname} ({_short(code.co_filename)}:{frame.f_lineno})")
            frame = frame.f_back
        self.stacks[";".join(reversed(names))] += weight

    def dump(self, signum: int = 0, frame: FrameType | None = None) -> None:
        stacks, self.stacks = self.stacks, collections.Counter()
        path = self.output.with_name(f"{self.output.stem}-{self.part}{self.output.suffix}")
        self.part += 1
        path.write_text("".join(f"{stack} {count}\n" for stack, count in stacks.items()))

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self.sample)
        signal.signal(signal.SIGUSR1, self.dump)
        signal.setitimer(signal.ITIMER_PROF, INTERVAL, INTERVAL)


# The parts of a request or a stream's event, for `parts`: a sample goes to the part of the
# innermost frame that names one (so a header callback of uvicorn's called from the client's read
# callback counts as uvicorn's machinery, and the read callback's own samples, its `recv` and the
# loop's C work before it, as the read). Patterns are tried in order for each frame.
PARTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("write() to the client", r"^(_OneWriteCycle\._write_body|DirectBody\.(write|end)) "),
        ("write() to the backend", r"^UpstreamConnection\.write "),
        ("the backend's bytes in (recv, the loop's wake-up)", r"^UpstreamConnection\.data_received "),
        ("the client's bytes in (recv, llhttp)", r"^GatewayHttpProtocol\.data_received "),
        (
            "connections opened and closed",
            r"connection_made |connection_lost |create_protocol |eof_received |"
            r"^UpstreamConnection\.__init__ |^HTTP11Transport\._connect|\(weakref\.py",
        ),
        (
            "uvicorn's request machinery, the task, the ASGI entry",
            r"^(RequestResponseCycle\.run_asgi|HttpToolsProtocol\.|GatewayHttpProtocol\.on_|"
            r"Gateway\.__call__|Endpoint\.__call__|Runner\.run|WeakSet\.)|\(asyncio/",
        ),
        ("token, identity, origin", r"\(gateway/(auth/|identity\.py|cors\.py|runtime\.py)|\(cachetools/"),
        (
            "the ChatKit body (read, checks, parse, rewrite)",
            r"\(gateway/(chatkit|body|jsondepth|pagecontext)\.py|^ChatKitEndpoint\._rewrite |"
            r"^Outbound\.injected_metadata ",
        ),
        ("ownership", r"\(gateway/ownership/"),
        ("the exchange with the backend", r"\(gateway/(upstream|transport|connection|outbound|cycle)\.py"),
        ("the endpoint, the answer, the relay", r"\(gateway/(protocol|relay|headers|responses|app)\.py"),
        ("metrics, the access record", r"\(gateway/(observe|logs)\.py|\(prometheus_client/|\(logging/"),
        ("other gateway code", r"\(gateway/"),
    )
)


def stacks(collapsed: str) -> Iterator[tuple[list[str], int]]:
    """Each collapsed stack's frames (outermost first) and weight."""
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        yield stack.split(";"), int(count)


def parts(collapsed: str) -> list[tuple[str, float]]:
    """Collapsed stacks' weight by part (`PARTS`), as shares of the whole, largest first; what no
    frame of a stack names is "other"."""
    weights: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, weight in stacks(collapsed):
        total += weight
        weights[_part(frames)] += weight
    return [(name, weight / max(total, 1)) for name, weight in weights.most_common()]


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in PARTS:
            if pattern.search(frame):
                return name
    return "other"


def flamegraph_svg(collapsed: str, title: str, width: int = 1200) -> str:
    """A flame graph (root at the bottom) of collapsed stacks, as a standalone SVG with a tooltip
    (`<title>`) per frame: the shape flamegraph.pl draws, without needing it."""
    tree: dict[str, Any] = {"": [0, {}]}
    total = 0
    for frames, weight in stacks(collapsed):
        total += weight
        node = tree[""]
        node[0] += weight
        for frame in frames:
            node = node[1].setdefault(LINE_NUMBER.sub(")", frame), [0, {}])  # one box per function
            node[0] += weight
    rows: list[tuple[int, float, float, str, int]] = []  # depth, x, width, name, weight

    def lay(children: dict[str, Any], depth: int, x: float) -> None:
        for name, (weight, grandchildren) in sorted(children.items()):
            w = weight / max(total, 1) * width
            if w >= 0.5:
                rows.append((depth, x, w, name, weight))
                lay(grandchildren, depth + 1, x)
            x += w

    lay(tree[""][1], 0, 0.0)
    height = (max((r[0] for r in rows), default=0) + 3) * 16
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
        'font-size="11">',
        f'<text x="4" y="13">{escape(title)} (hover a frame for its share)</text>',
    ]
    for depth, x, w, name, weight in rows:
        y = height - (depth + 1) * 16
        share = weight / total
        hue = 20 + zlib.crc32(name.encode()) % 40
        label = name if len(name) * 6.6 < w - 4 else name[: max(0, int((w - 4) / 6.6) - 2)] + ".." if w > 30 else ""
        out.append(
            f'<g><title>{escape(name)}: {share:.1%}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="15" '
            f'fill="hsl({hue},90%,60%)"/><text x="{x + 2:.1f}" y="{y + 11}">{escape(label)}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/gateway/", "/python3.11/"):
        if marker in filename:
            head = "gateway/" if marker == "/gateway/" else ""
            return head + filename.split(marker, 1)[1]
    return filename


def main() -> int:
    if sys.argv[1] == "svg":  # python -m bench.cpuprofile svg STACKS OUT.svg TITLE
        Path(sys.argv[3]).write_text(flamegraph_svg(Path(sys.argv[2]).read_text(), sys.argv[4]))
        return 0
    output = Path(sys.argv[1])
    sampler = Sampler(output)
    sampler.start()
    from gateway.cli import main as gateway_main

    try:
        return gateway_main(sys.argv[3:] if sys.argv[2] == "--" else sys.argv[2:])
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        sampler.dump()


if __name__ == "__main__":
    sys.exit(main())
