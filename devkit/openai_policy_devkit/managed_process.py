"""Child processes for test fixtures: logged to a file, stopped for sure, never orphaned.

Shared by the control plane (etcd, kube-apiserver, kube-controller-manager) and redis-server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


class ProcessFailed(RuntimeError):
    """A managed process exited (or never became ready); the message carries its log's tail."""


def free_ports(count: int) -> list[int]:
    """Distinct free loopback TCP ports.

    All sockets stay bound until every port is chosen, so the ports differ from each other; another
    program could still take one before our child binds it, which is unlikely enough on a test machine.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    return free_ports(1)[0]


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file (or a note that it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. If the test run is killed (SIGKILL, os._exit from a
    # timeout), the kernel kills the child too, so no etcd or apiserver outlives its test session.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _can_die_with_parent() -> bool:
    # The kernel sends the signal when the *thread* that forked the child exits, so only tie the
    # child to the main thread (where pytest runs fixtures); one started from a worker thread
    # would otherwise be killed as soon as that thread ends.
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


class ManagedProcess:
    """One child process whose stdout and stderr go to `log_path` (appended across restarts)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                # Own session: a Ctrl-C in the terminal reaches only Python, which then stops
                # the children in order instead of all of them dying at once.
                start_new_session=True,
                preexec_fn=_die_with_parent if _can_die_with_parent() else None,
            )
        except OSError:
            self._close_log()
            raise

    def check_alive(self) -> None:
        """Raise ProcessFailed, with the log's tail, if the process has exited."""
        if self._proc is None:
            raise ProcessFailed(f"{self.name} was never started")
        code = self._proc.poll()
        if code is not None:
            raise ProcessFailed(self.failure_message(f"{self.name} exited with code {code}"))

    def failure_message(self, headline: str, lines: int = 40) -> str:
        return f"{headline}; last lines of {self.log_path}:\n{tail(self.log_path, lines)}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; always reaps the process."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a reaped child no longer exists at all)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state is the field after the parenthesised command name.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
