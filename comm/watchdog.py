"""Hang protection for MPI-based communicators.

Every collective a rank enters is numbered. A background thread watches the one in progress: if it
has not completed within ``timeout`` seconds, the thread asks every other rank (over a duplicated
communicator, so it never mixes with the training's messages) which collective it has reached,
names the ranks that did not arrive, and aborts the whole job. A rank that does not answer at all
(dead, or stuck holding the interpreter) is named too.

This needs MPI_THREAD_MULTIPLE, which mpi4py asks for by default; with a lower thread level the
watchdog only aborts, without naming ranks.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

from core.errors import EXIT_TIMEOUT

_QUERY, _REPLY = 7301, 7302


class Watchdog:
    def __init__(self, world, timeout: float):
        from mpi4py import MPI

        self._mpi = MPI
        self.timeout = timeout
        self.rank, self.size = world.Get_rank(), world.Get_size()
        self.can_query = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        self.ctl = world.Dup() if self.can_query else None
        self.completed = 0          # collectives finished by this rank
        self._current = None        # (number, name, started) of the one in progress
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dpmlp-watchdog", daemon=True)
        if timeout > 0:
            self._thread.start()

    @contextlib.contextmanager
    def collective(self, name: str):
        with self._lock:
            self._current = (self.completed + 1, name, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._current = None
                self.completed += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._answer_queries()
            with self._lock:
                current = self._current
            if current and time.monotonic() - current[2] > self.timeout:
                self._report_and_abort(*current)

    def _answer_queries(self) -> None:
        if not self.can_query:
            return
        status = self._mpi.Status()
        while self.ctl.Iprobe(source=self._mpi.ANY_SOURCE, tag=_QUERY, status=status):
            source = status.Get_source()
            self.ctl.recv(source=source, tag=_QUERY)
            with self._lock:
                reached = self._current[0] if self._current else self.completed
            self.ctl.send(reached, dest=source, tag=_REPLY)

    def _report_and_abort(self, number: int, name: str, started: float) -> None:
        missing = self._missing_ranks(number) if self.can_query else None
        who = (f"ranks that did not arrive: {', '.join(map(str, missing))}" if missing
               else "could not tell which ranks did not arrive")
        # One whole line, flushed and given a moment to leave before the launcher's abort banner
        sys.stderr.write(f"\ndpmlp: error on rank {self.rank}: collective {name} (#{number}) did "
                         f"not complete within {self.timeout:g} s; {who}; aborting the job "
                         f"(--collective-timeout sets the limit)\n")
        sys.stderr.flush()
        time.sleep(0.2)
        self._mpi.COMM_WORLD.Abort(EXIT_TIMEOUT)
        os._exit(EXIT_TIMEOUT)

    def _missing_ranks(self, number: int, grace: float = 3.0) -> list[int]:
        others = [r for r in range(self.size) if r != self.rank]
        for r in others:
            self.ctl.isend(number, dest=r, tag=_QUERY)
        replies: dict[int, int] = {}
        requests = {r: self.ctl.irecv(source=r, tag=_REPLY) for r in others}
        deadline = time.monotonic() + grace
        while requests and time.monotonic() < deadline:
            self._answer_queries()  # others may be asking us at the same time
            for r, req in list(requests.items()):
                done, value = req.test()
                if done:
                    replies[r] = value
                    del requests[r]
            time.sleep(0.01)
        return sorted([r for r, reached in replies.items() if reached < number] + list(requests))
