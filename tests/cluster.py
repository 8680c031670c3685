"""A real Ray cluster on this machine for the tests: `ray start` processes (a head and worker nodes
of 1 CPU each, bound to 127.0.0.1, with their own ports and temp dir), each node's processes known
by pid so that a test can kill one node and the fixture stops exactly what it started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

#: environment of the cluster's processes and of the drivers that join it: no Ray token (127.0.0.1
#: only); a lost node declared dead after 3 failed health checks 1 s apart rather than Ray's 5 checks
#: 3 s apart (a killed raylet refuses at once, so each check fails at once), which shortens the
#: node-loss tests without changing what they test
ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
    "RAY_AUTH_MODE": "disabled",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes(temp_dir: Path) -> set[int]:
    """The processes of the Ray whose temp dir is ``temp_dir``: those that name it on their command
    line (GCS, raylets, dashboard, monitors) and their children (agents, workers). Another Ray on
    this machine (a job's embedded one, starting while a node does) is never among them."""
    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        if str(temp_dir) in " ".join(p.info["cmdline"] or []):
            try:
                found |= {p.info["pid"], *(c.pid for c in p.children(recursive=True))}
            except psutil.Error:
                pass
    return found


class LocalCluster:
    """``ray start`` on 127.0.0.1: ``start()`` the head, ``add_node()`` worker nodes."""

    def __init__(self):
        # short: Ray's socket paths under it must fit in a unix socket name
        self.temp_dir = Path(tempfile.mkdtemp(prefix="idcmap-ray-"))
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: list[set[int]] = []  # the pids each `ray start` added: [head, worker, ...]
        self.killed: set[int] = set()  # the nodes kill_node took down

    def _ray_start(self, *args: str) -> set[int]:
        before = _ray_processes(self.temp_dir)
        # every node its own agent ports: Ray's defaults (52365 ...) may be taken by another Ray on
        # this machine (the tests' embedded one), and a head without its job agent refuses submissions
        ports = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                        "runtime-env-agent-port", "metrics-export-port")]  # fmt: skip
        cmd = ["ray", "start", "--node-ip-address=127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", *ports, *args]
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        time.sleep(1.0)
        added = _ray_processes(self.temp_dir) - before
        self.nodes.append(added)
        return added

    def start(self) -> LocalCluster:
        self._ray_start(
            "--head", "--port", str(self.port), "--temp-dir", str(self.temp_dir),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
        )  # fmt: skip
        return self

    def add_node(self, *args: str) -> set[int]:
        """A worker node (``args``: more ``ray start`` options, e.g. ``--num-gpus 1``)."""
        added = self._ray_start("--address", self.address, *args)
        deadline = time.time() + 60
        while time.time() < deadline and self.alive_nodes() < len(self.nodes) - len(self.killed):
            time.sleep(0.5)
        return added

    def alive_nodes(self) -> int:
        import json

        out = subprocess.run(
            ["python", "-c", f"import ray, json; ray.init(address='{self.address}', logging_level='ERROR'); "
             "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))"],
            env=ENV, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0

    def raylet(self, node: int) -> psutil.Process:
        """The raylet process of node ``node`` (0: the head)."""
        for pid in self.nodes[node]:
            try:
                p = psutil.Process(pid)
                if "raylet" in " ".join(p.cmdline()) and "ray::" not in p.name():
                    return p
            except psutil.Error:
                pass
        raise AssertionError(f"node {node} has no raylet")

    def kill_node(self, node: int) -> None:
        """SIGKILL a node's raylet: its workers die with it, as when a machine is lost."""
        self.raylet(node).send_signal(signal.SIGKILL)
        self.killed.add(node)

    def stop(self) -> None:
        """Stop every process the cluster started (and their children), by pid."""
        procs = []
        for pids in self.nodes:
            for pid in pids:
                try:
                    p = psutil.Process(pid)
                    procs += [p, *p.children(recursive=True)]
                except psutil.Error:
                    pass
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=3)  # raylet and GCS drain slowly on SIGTERM: no need here
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
