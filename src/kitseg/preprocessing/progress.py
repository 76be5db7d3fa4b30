"""Run a function over cases, in worker processes, with a rich progress bar on stderr."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from kitseg.progress import make_progress


def _init_worker() -> None:
    """One thread per worker process: the workers already use the cores (no oversubscription).

    Set before anything imports torch (which reads OMP_NUM_THREADS once), so that workers which
    need no torch (the fingerprint) do not pay for importing it.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def progress_map(fn: Callable, jobs: Sequence, workers: int = 2, progress: bool = True,
                 description: str = "cases", on_result: Callable[[int, object], None] | None = None) -> list:
    """``[fn(job) for job in jobs]``, ``workers`` at a time in fresh (spawned) processes when > 1.

    Results come back in the order of ``jobs``; ``on_result(i, result)`` is called in this process
    as each job finishes. An exception in a job cancels the rest and is raised here; Ctrl-C
    cancels the pending jobs.
    """
    results: list = [None] * len(jobs)
    with make_progress(progress) as bar:
        task = bar.add_task(description, total=len(jobs))
        if workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                results[i] = fn(job)
                if on_result is not None:
                    on_result(i, results[i])
                bar.advance(task)
            return results
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                                 initializer=_init_worker) as pool:
            pending = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = pending.pop(fut)
                        results[i] = fut.result()
                        if on_result is not None:
                            on_result(i, results[i])
                        bar.advance(task)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    return results
