"""`python -m bench.cpuprofile OUT -- gateway serve ...`: the gateway, sampled on its own CPU time.

py-spy samples on the wall clock and counts a thread as busy while it is runnable; on a machine
whose cores are all taken (the load generator, the upstream and the gateway on 2 cores), a
gateway preempted right after a `write()` that woke its peer is "busy" in that `write()` until it
runs again, so socket writes look several times dearer than the CPU they use. This sampler asks
the kernel for a signal per millisecond of the process's own CPU time (`ITIMER_PROF`, user +
system), so a sample is CPU spent, and records the Python stack it interrupts, weighed by the CPU
time since the previous sample. Time in C (a syscall, a C extension) lands on the Python line that
called it; time in the event loop's own C code, on the Python callback it runs next.

The collapsed stacks (`frame;frame;... count`, as flamegraph.pl and speedscope read them) are
written to OUT at exit and on `SIGUSR1` (counts since the previous write, then reset), so one
process can be sampled under several loads in turn.
"""

from __future__ import annotations

import collections
import signal
import sys
import time
from pathlib import Path
from types import FrameType

INTERVAL = 0.001
ROOT_PREFIXES = ("/work/", "/root/", "/usr/")


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


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/gateway/", "/python3.11/"):
        if marker in filename:
            head = "gateway/" if marker == "/gateway/" else ""
            return head + filename.split(marker, 1)[1]
    return filename


def main() -> int:
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
