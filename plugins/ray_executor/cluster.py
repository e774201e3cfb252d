"""A real Ray cluster on this machine, made as ``ray start`` makes one on several: a head node and worker nodes,
each its own ``ray start --block`` process tree (GCS, raylet, agents, worker processes), addressed on 127.0.0.1.

For the tests and the benchmark. Each node runs in a session of its own and is stopped by killing the
processes of that session: never ``ray stop``, which ends every Ray process of the user on the machine, someone
else's cluster included. Nodes register as 127.0.0.2, a loopback address (Ray's gRPC servers still listen on
every interface), and the cluster requires its own random token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``):
drivers connect with :meth:`LocalCluster.driver_env` in their environment, and ``~/.ray/auth_token`` (which a
local ``ray.init()`` writes) is neither read nor written.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NODE_IP = "127.0.0.2"
"""A loopback address Ray keeps as it is (it swaps 127.0.0.1 and localhost for the machine's routable one)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A head node (``head_cpus`` CPUs, 0 keeps jobs off it) and ``workers`` worker nodes of ``cpus`` CPUs each.

    ``with LocalCluster(workers=1) as cluster:`` starts it and stops it; ``cluster.address`` is what a driver
    connects to (``RAY_ADDRESS`` or ``--executor ray:address=...``, with :meth:`driver_env` in its
    environment). ``temp_dir`` is short on purpose: Ray's Unix socket paths must fit in 107 bytes.
    """

    def __init__(self, workers: int = 1, cpus: int = 1, head_cpus: int = 1, object_store_mb: int = 100):
        self.workers, self.cpus, self.head_cpus, self.object_store_mb = workers, cpus, head_cpus, object_store_mb
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.nodes: list[subprocess.Popen] = []
        self.address = ""
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.token = secrets.token_hex(32)

    def driver_env(self) -> dict[str, str]:
        """The variables a driver (or node) of this cluster needs: its token, and no usage statistics."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}

    def _start_node(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.temp_dir / f"{name}.log", "wb")
        cmd = [self.ray, "start", "--block", f"--node-ip-address={NODE_IP}", f"--temp-dir={self.temp_dir}",
               "--num-gpus=0", f"--object-store-memory={self.object_store_mb * 2 ** 20}",
               "--include-log-monitor=false", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **self.driver_env()}, start_new_session=True)
        log.close()
        proc.name = name
        self.nodes.append(proc)
        return proc

    def _wait_started(self, proc: subprocess.Popen, deadline: float) -> None:
        log = self.temp_dir / f"{proc.name}.log"
        while time.monotonic() < deadline:
            if "Ray runtime started" in log.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Ray node {proc.name} did not start (exit {proc.poll()}):\n{tail}")

    def start(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        port = free_port()
        head = self._start_node("head", ["--head", f"--port={port}", f"--num-cpus={self.head_cpus}",
                                         "--include-dashboard=false", f"--ray-client-server-port={free_port()}"])
        self.address = f"{NODE_IP}:{port}"
        self._wait_started(head, deadline)
        for _ in range(self.workers):
            self.add_worker(deadline)
        return self.address

    def add_worker(self, deadline: float | None = None) -> subprocess.Popen:
        proc = self._start_node(f"worker{len(self.nodes)}", [f"--address={self.address}", f"--num-cpus={self.cpus}"])
        self._wait_started(proc, deadline or time.monotonic() + 120)
        return proc

    def processes(self) -> dict[int, str]:
        """Every live process of the cluster: pid -> command line (a task's worker reads ``ray::<task name>``)."""
        out = {}
        for pid in _session_members({proc.pid for proc in self.nodes}):
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                out[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                pass
        return out

    def stop(self, keep_logs: bool = False) -> None:
        """Kill every process of every node: each node's session (Ray's worker processes lead process groups
        of their own, so a process group is not enough), SIGTERM first, SIGKILL after 3 seconds."""
        sessions = {proc.pid for proc in self.nodes}
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            members = _session_members(sessions)
            for pid in members:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            end = time.monotonic() + grace
            for proc in self.nodes:
                try:
                    proc.wait(timeout=max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            while _session_members(sessions) and time.monotonic() < end:
                time.sleep(0.2)
        self.nodes.clear()
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _session_members(sessions: set[int]) -> list[int]:
    """Live processes in these sessions (a node was started with start_new_session: its sid is its pid)."""
    members = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getsid(pid) in sessions and _state(pid) != "Z":
                members.append(pid)
        except OSError:
            pass
    return members


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
