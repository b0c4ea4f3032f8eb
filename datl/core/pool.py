"""Work spread over forked processes, and how many cores this process may use.

Invariant: results come back in the order of the parts, and at most ``window`` parts are
in flight at a time, so memory grows with the window, never with the number of parts (a
source of 10^8 rows is 10^5 parts). Workers are forked: they inherit the parent's open
manifest and imports, and each records its own PIL warnings (``warnings.catch_warnings``
is not thread-safe, so threads would mix up whose warning is whose).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any


def cores_per_rank() -> int:
    """This process's share of the cores it may run on (torchrun's ranks on one node split
    them): the worker count of the forked pools."""
    return max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def fork_map(
    fn: Callable[..., Any], parts: Iterable[tuple], workers: int | None = None, window: int | None = None
) -> Iterator[tuple[tuple, Any]]:
    """``(part, fn(*part))`` for each part, computed in ``workers`` forked processes
    (default :func:`cores_per_rank`), in order. With one worker, or a single part, in this
    process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    parts = list(parts)
    workers = workers or cores_per_rank()
    if workers == 1 or len(parts) <= 1:
        for part in parts:
            yield part, fn(*part)
        return
    window = window or 4 * workers
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        # a sliding window: a new part is submitted as each result is taken, so no worker waits
        # for the slowest part of a batch (batches of `window` parts left cores idle at their ends)
        todo = iter(parts)
        flight = deque((part, pool.submit(fn, *part)) for part in islice(todo, window))
        while flight:
            part, future = flight.popleft()
            result = future.result()
            nxt = next(todo, None)
            if nxt is not None:
                flight.append((nxt, pool.submit(fn, *nxt)))
            yield part, result
