"""Drive `cluster/testbed` from tests: one testbed per session (see the `testbed` fixture in conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "cluster" / "testbed"
HOSTS = 3  # host0 (head) + two hosts for two training workers; tests that need more `join`
WORKER_IP = re.compile(r"RayTrainWorker pid=\d+, ip=(198\.18\.\d+\.\d+)")  # Ray's prefix on a worker's lines


def unavailable() -> str | None:
    """Why a testbed cannot start here, or None."""
    if sys.platform != "linux":
        return "the testbed needs Linux namespaces"
    if os.geteuid() != 0:
        return "the testbed needs root (network, mount and PID namespaces)"
    missing = [tool for tool in ("ip", "tc", "unshare", "nsenter", "mount") if not shutil.which(tool)]
    if missing:
        return f"missing tools: {', '.join(missing)} (iproute2, util-linux)"
    if find_spec("moto") is None:
        return "moto is not installed: pip install -e .[testbed]"
    return None


class Testbed:
    def __init__(self):
        # Hosts run this interpreter, with this checkout first on the path.
        self.env = {**os.environ, "PYTHON": sys.executable}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(CLI), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"cluster/testbed {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
        return result

    def up(self, hosts: int = HOSTS) -> Testbed:
        # --owner: if this test process dies, the testbed's daemon takes everything down.
        self.cli("up", str(hosts), "--owner", str(os.getpid()), timeout=600)
        return self

    def down(self) -> None:
        self.cli("down", timeout=300)

    def status(self) -> dict:
        return json.loads(self.cli("status").stdout)

    def hosts(self) -> dict:
        return self.status()["hosts"]

    def client_env(self, **extra: str) -> dict:
        """This process's environment plus `cluster/testbed env`: a client on the machine."""
        env = {**self.env, **self.status()["env"], **extra}
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return env

    def exec(self, host: str, *cmd: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        return self.cli("exec", host, "--", *cmd, timeout=timeout, check=check)

    def worker_hosts(self, out: str) -> set[str]:
        """The hosts whose training workers printed in a job's output `out` (by Ray's line prefix)."""
        by_ip = {host["ip"]: name for name, host in self.hosts().items()}
        return {by_ip.get(ip, ip) for ip in WORKER_IP.findall(out)}

    def python(self, host: str, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.exec(host, "python", "-c", code, timeout=timeout)

    def nodes(self) -> list[dict]:
        """Ray's node table seen from the head: [{node_ip, state, ...}]."""
        result = self.exec("host0", "ray", "list", "nodes", "--format", "json", "--limit", "1000")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def reset(self) -> None:
        """Between tests: links uncapped, and a fresh machine in place of every killed host and of every
        host whose Ray node died (Ray declared it dead during a partition, so it stopped its own Ray)."""
        hosts = self.hosts()
        if not hosts["host0"]["alive"]:
            self.cli("join", "host0", timeout=300)  # a new head; the other hosts' Ray joins it
        in_ray = {n["node_ip"] for n in self.nodes() if n["state"] == "ALIVE"}
        for name, host in self.hosts().items():
            if host["alive"] and host["ip"] in in_ray:
                self.cli("limit", name, "off")
                continue
            if host["alive"]:
                self.cli("kill", name)
            self.cli("join", name, timeout=300)
