"""The atheris harness for the token parser runs clean for a bounded time (fuzz/fuzz_token.py).

A short run in every test session: it catches a harness that no longer starts and crashes that
are quick to find. Longer runs are for a developer's machine:
`python fuzz/fuzz_token.py CORPUS_DIR -max_total_time=600`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import atheris  # noqa: E402,F401  (a test dependency: the harness below needs it)

HARNESS = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_token.py"
SECONDS = 10


def test_token_fuzzer_finds_no_crash_in_a_bounded_run(tmp_path: Path) -> None:
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    args = [
        sys.executable,
        str(HARNESS),
        str(corpus),
        f"-max_total_time={SECONDS}",
        "-timeout=5",  # one input taking longer is a hang, reported as a crash
        "-rss_limit_mb=1024",
        f"-artifact_prefix={artifacts}/",
    ]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 60)
    log = done.stderr[-4000:]
    assert done.returncode == 0, log
    assert not list(artifacts.iterdir()), log
    runs = re.search(r"Done (\d+) runs", done.stderr)
    assert runs and int(runs.group(1)) > 1000, log
    assert len(list(corpus.iterdir())) > 7, "the fuzzer kept no input beyond the seeds"
