"""datl.core.pool.fork_map: results in the order of the parts, at most `window` parts in flight."""

from __future__ import annotations

import os
import time
from pathlib import Path

from datl.core.pool import fork_map


def _slow_square(folder: str, i: int, delay: float) -> tuple[int, int]:
    Path(folder, f"started-{i}").touch()
    time.sleep(delay)
    return i * i, os.getpid()


def test_results_come_in_order_with_a_bounded_window(tmp_path):
    # later parts finish first: the order must still be the parts'
    parts = [(str(tmp_path), i, 0.02 * ((7 - i) % 4)) for i in range(24)]
    started_when_first_taken = None
    got = []
    for part, (sq, pid) in fork_map(_slow_square, parts, workers=2, window=4):
        if started_when_first_taken is None:
            started_when_first_taken = len(list(tmp_path.glob("started-*")))
        got.append((part[1], sq, pid))
    assert [g[0] for g in got] == list(range(24)) and all(sq == i * i for i, sq, _ in got)
    assert started_when_first_taken <= 4 + 1  # the window, and the one submitted as it is taken
    assert {pid for *_, pid in got} != {os.getpid()}  # computed in forked workers
    assert list(fork_map(_slow_square, parts[:1], workers=2))[0][1][1] == os.getpid()  # one part: here
