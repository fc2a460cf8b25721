"""``smtpconf serve`` runs the submission server beside the HTTP workers as a child process it restarts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

log = logging.getLogger("smtpconf.submission")
#: Longest wait before a submission server that keeps exiting is started again.
MAX_BACKOFF_SECONDS = 30.0
#: How long a stopping submission server has to finish the messages it is relaying.
STOP_SECONDS = 35.0
#: A child that exited cleanly was asked to stop (SIGTERM or SIGINT): most often the whole instance is stopping
#: (a terminal's Ctrl-C, a service manager signalling the process group), so it is started again only if the
#: instance is still running after this long, longer than the HTTP workers' graceful stop.
CLEAN_EXIT_PAUSE_SECONDS = 15.0


class Beside:
    """The child ``smtpconf submission`` process: started now, started again when it exits, stopped with ``stop``.

    It reads the same ``SMTPCONF_*`` environment (and the instance's metrics
    directory and generation board), and exits by itself when this process
    goes away, since its standard input is a pipe whose other end only this
    process holds.
    """

    def __init__(self) -> None:
        #: The HTTP workers are forked from this process and unwind through the same ``finally``; only the
        #: process that started the child may stop it.
        self._owner = os.getpid()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="submission-supervisor", daemon=True)

    def start(self) -> "Beside":
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "submission", "--watch-stdin"], stdin=subprocess.PIPE, close_fds=True
        )

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._child = child = self._spawn()
            code = child.wait()
            _forget_metrics(child.pid)
            if self._stopping.is_set():
                return
            if code == 0 and self._stopping.wait(CLEAN_EXIT_PAUSE_SECONDS):
                return
            log.error("submission server exited; starting it again", extra={"exit_code": code, "in_seconds": backoff})
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def stop(self) -> None:
        """Stop the child (SIGTERM: it drains the messages in flight) and wait for it; nothing in a forked worker."""
        if os.getpid() != self._owner:
            return
        with self._lock:
            self._stopping.set()
            child = self._child
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _forget_metrics(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
