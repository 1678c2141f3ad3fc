"""cluster/testbed: separate hosts on one machine (root). They run last, on one session testbed."""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest
import torch
from helpers import TINY
from testbed_support import ROOT

pytestmark = pytest.mark.testbed

HEAD, HOST_IPS = "198.18.0.10", ["198.18.0.10", "198.18.0.11", "198.18.0.12"]


def connect(testbed, host: str, ip: str, port: int, timeout: float = 2) -> str:
    """Open a TCP connection from inside `host`; returns "ok" or the error."""
    code = (
        "import socket\n"
        f"try: socket.create_connection(({ip!r}, {port}), timeout={timeout}); print('ok')\n"
        "except OSError as e: print(e)"
    )
    return testbed.python(host, code).stdout.strip()


def test_exec_status_and_isolation(testbed):
    assert testbed.exec("host1", "sh", "-c", "exit 7").returncode == 7
    assert testbed.exec("host1", "hostname").stdout.strip() == "host1"
    # Private /tmp: a file made in host1 is neither in host2 nor on the machine.
    probe = f"/tmp/testbed-probe-{uuid.uuid4().hex}"
    assert testbed.exec("host1", "touch", probe).returncode == 0
    assert testbed.exec("host1", "test", "-e", probe).returncode == 0
    assert testbed.exec("host2", "test", "-e", probe).returncode == 1
    assert not os.path.exists(probe)
    # The machine's files are there read-only; HOME is private and writable.
    assert testbed.exec("host1", "test", "-r", str(ROOT / "setup.py")).returncode == 0
    assert testbed.exec("host1", "touch", str(ROOT / "testbed-probe")).returncode != 0
    assert testbed.exec("host1", "sh", "-c", 'touch "$HOME/x" && test "$HOME" != /root').returncode == 0
    # Own PID namespaces: each host's PID 1 is its own init, and host2 cannot see host1's processes.
    for host in ("host1", "host2"):
        assert host in testbed.exec(host, "cat", "/proc/1/cmdline").stdout
    sleeper = testbed.exec("host1", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!").stdout.strip()
    assert testbed.exec("host1", "test", "-d", f"/proc/{sleeper}").returncode == 0
    assert "sleep" not in testbed.exec("host2", "sh", "-c", "cat /proc/[0-9]*/comm").stdout
    # Network: hosts reach each other on 198.18.x; nothing else is routable.
    assert connect(testbed, "host1", HEAD, 6379) == "ok"
    assert "default" not in testbed.exec("host1", "ip", "route").stdout
    assert "unreachable" in connect(testbed, "host1", "192.0.2.1", 80)  # TEST-NET-1: never sent


def test_ray_sees_hosts_and_jobs_need_the_token(testbed, tmp_path):
    alive = {n["node_ip"] for n in testbed.nodes() if n["state"] == "ALIVE"}
    assert set(HOST_IPS) <= alive
    env = testbed.client_env()
    assert env["RAY_ADDRESS"] == f"http://{HEAD}:8265"
    job = subprocess.run(
        ["ray", "job", "submit", "--", "python", "-c",
         "import ray, socket; ray.init(); print('JOB', socket.gethostname(), len(ray.nodes()))"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "JOB host0" in job.stdout
    # Without the token (and no token file in HOME): refused.
    anonymous = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    anonymous["HOME"] = str(tmp_path)
    refused = subprocess.run(["ray", "job", "submit", "--", "echo", "ran"], env=anonymous,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode != 0
    assert "ran" not in refused.stdout
    assert "Unauthorized" in refused.stdout + refused.stderr


def test_store_from_every_host(testbed):
    prefix = f"probe-{uuid.uuid4().hex[:8]}"
    write = (
        "import os, pyarrow.fs as fs\n"
        "f, p = fs.FileSystem.from_uri(os.environ['BEGAN_TESTBED_STORE'])\n"
        f"with f.open_output_stream(p + '/{prefix}/' + os.environ['BEGAN_TESTBED_HOST']) as o:\n"
        "    o.write(os.urandom(6 * 2**20))\n"  # > 5 MiB: a multipart upload
    )
    for host in ("host0", "host1", "host2"):
        result = testbed.python(host, write)
        assert result.returncode == 0, result.stderr
    listing = (
        "import os, pyarrow.fs as fs\n"
        "f, p = fs.FileSystem.from_uri(os.environ['BEGAN_TESTBED_STORE'])\n"
        f"print(sorted((i.base_name, i.size) for i in f.get_file_info(fs.FileSelector(p + '/{prefix}'))))"
    )
    seen = subprocess.run(["python", "-c", listing], env=testbed.client_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.strip() == str([(f"host{i}", 6 * 2**20) for i in range(3)])


def test_two_workers_on_two_hosts_with_run_dir_on_the_store(testbed, tmp_path):
    """`ray job submit` from the machine to host0's job API, workers on host1 and host2, run.dir on
    the store: the run finishes and its final checkpoint is bitwise the one of the same two-worker run
    on a one-host cluster (CPU, gloo). Then sample, eval and report read the s3:// run from the machine."""
    from began_dist import storage
    from began_dist.train import state as ckpt

    env = testbed.client_env()
    run_dir = storage.join(env["BEGAN_TESTBED_STORE"], f"runs/two-{uuid.uuid4().hex[:8]}")
    common = ["--workers", "2", *TINY, "train.steps=8"]
    job = subprocess.run(
        ["ray", "job", "submit", "--", "began-dist", "train", *common, "run.worker_resources.train_slot=1",
         f"run.dir={run_dir}"],
        env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-4000:]
    workers = set(re.findall(r"RayTrainWorker pid=\d+, ip=(198\.18\.\d+\.\d+)", out))
    assert len(workers) == 2 and "198.18.0.10" not in workers, workers  # two hosts, not the head

    # the same run on a one-host cluster: a local Ray cluster on 127.0.0.1 of its own (its own
    # RAY_TMPDIR, short for Ray's socket paths, so it joins no other local Ray instance)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    local_env = {key: value for key, value in testbed.env.items() if key != "RAY_ADDRESS"}
    local_dir = tmp_path / "one-host"
    try:
        local = subprocess.run(
            [os.path.join(os.path.dirname(testbed.env["PYTHON"]), "began-dist"), "train", *common,
             f"run.dir={local_dir}"], env={**local_env, "RAY_TMPDIR": ray_tmp}, capture_output=True, text=True,
            timeout=400,
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert local.returncode == 0, (local.stdout + local.stderr)[-4000:]

    store_env = {key: env[key] for key in env if key.startswith("AWS_")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in store_env.items():
            patch.setenv(key, value)
        assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [4, 8]
        remote = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))
        mine = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(local_dir)))
        for net in ("G", "D"):
            for name, tensor in mine[net].items():
                assert torch.equal(tensor, remote[net][name]), (net, name)
        assert torch.equal(torch.as_tensor(remote["k_t"]), torch.as_tensor(mine["k_t"]))
        for name in ("config.yaml", "log.txt", "stats.jsonl", "samples/step-00000008.png"):
            assert storage.isfile(storage.join(run_dir, name)), name
        assert not any(".pt" in name for name in storage.listdir(storage.join(run_dir, "ray")))
    # the commands that read a run directory, from the machine, outside every host
    for command in (["sample", run_dir, "--n", "4", "--out", str(tmp_path / "s")],
                    ["eval", run_dir, "--metrics", "swd", "--n", "16"], ["report", run_dir]):
        done = subprocess.run([os.path.join(os.path.dirname(testbed.env["PYTHON"]), "began-dist"), *command],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command[0], done.stderr[-3000:])


def test_run_dir_a_worker_cannot_see_is_refused(testbed):
    """run.dir under the driver host's private /tmp: every worker checks it before any step; the run
    stops with exit 2 naming run.dir and the nodes, and Ray does not retry it."""
    job = subprocess.run(
        ["ray", "job", "submit", "--", "began-dist", "train", "--workers", "2", *TINY, "train.steps=4",
         "run.dir=/tmp/runs/private", "run.worker_resources.train_slot=1", "run.max_failures=2"],
        env=testbed.client_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = job.stdout + job.stderr
    assert job.returncode != 0, out[-3000:]
    assert "run.dir=/tmp/runs/private: not visible from node 198.18.0.11" in out, out[-3000:]
    assert "198.18.0.12" in out.split("not visible from", 1)[1].splitlines()[0]
    assert "exit code 2" in out or "exited with code 2" in out or "code 2" in out, out[-3000:]
    assert "'step': 2" not in out and "step 2/" not in out  # no training step ran


def test_partition_blocks_then_restores(testbed):
    cut = subprocess.Popen([str(ROOT / "cluster" / "testbed"), "partition", "host1", "6"], env=testbed.env,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "cut off" in cut.stdout.readline()
        assert connect(testbed, "host1", HEAD, 6379, timeout=1.5) != "ok"
        assert cut.wait(timeout=60) == 0
    finally:
        cut.kill()
    assert connect(testbed, "host1", HEAD, 6379) == "ok"


def transfer_rate(testbed, host: str, nbytes: int) -> float:
    """Bytes/s of one TCP transfer from `host` to a listener on the bridge (the machine's end)."""
    server = socket.create_server(("198.18.0.1", 0))
    server.settimeout(60)
    port, got, times = server.getsockname()[1], [], []

    def receive():
        conn, _ = server.accept()
        conn.settimeout(60)
        start, count = time.monotonic(), 0
        while chunk := conn.recv(1 << 16):
            count += len(chunk)
        times.append(time.monotonic() - start)
        got.append(count)

    thread = threading.Thread(target=receive)
    thread.start()
    send = f"import socket; s = socket.create_connection(('198.18.0.1', {port})); s.sendall(bytes({nbytes})); s.close()"
    try:
        assert testbed.python(host, send).returncode == 0
        thread.join(60)
    finally:
        server.close()
    assert got == [nbytes]
    return nbytes / times[0]


def test_limit_caps_throughput(testbed):
    uncapped = transfer_rate(testbed, "host1", 2_000_000)
    testbed.cli("limit", "host1", "8mbit")  # 1 MB/s
    capped = transfer_rate(testbed, "host1", 2_000_000)
    assert capped < 1.3e6, capped  # the cap plus tbf's burst
    assert uncapped > 5 * capped, (uncapped, capped)
    testbed.cli("limit", "host1", "off")
    assert transfer_rate(testbed, "host1", 2_000_000) > 3 * capped


def test_kill_leaves_no_process(testbed):
    assert testbed.exec("host2", "sh", "-c", "sleep 300 >/dev/null 2>&1 &").returncode == 0
    testbed.cli("kill", "host2")
    assert subprocess.run(["ip", "netns", "pids", "began-tb-host2"], capture_output=True, text=True).stdout == ""
    assert "state DOWN" in subprocess.run(["ip", "link", "show", "begantb-h2"], capture_output=True, text=True).stdout
    assert testbed.exec("host2", "true").returncode == 255
    assert testbed.hosts()["host2"]["alive"] is False
    deadline = time.monotonic() + 90  # Ray's health check: 10-20 s (cluster/README.md)
    while {"198.18.0.12"} & {n["node_ip"] for n in testbed.nodes() if n["state"] == "ALIVE"}:
        assert time.monotonic() < deadline, "Ray still counts host2 alive"
        time.sleep(2)


def test_join_adds_a_node(testbed):
    before = set(testbed.hosts())
    out = testbed.cli("join", timeout=300).stdout
    (name,) = set(testbed.hosts()) - before
    ip = testbed.hosts()[name]["ip"]
    assert f"{name} joined at {ip}" in out
    node = [n for n in testbed.nodes() if n["node_ip"] == ip and n["state"] == "ALIVE"]
    assert node and json.dumps(node[0]["resources_total"]).count("train_slot") == 1


def test_one_testbed_per_machine(testbed):
    refused = testbed.cli("up", "2", check=False)
    assert refused.returncode == 1 and "a testbed is up" in refused.stderr
    assert testbed.exec("host0", "true").returncode == 0  # the live one is untouched


def test_join_host0_starts_a_new_head_the_hosts_rejoin(testbed):
    testbed.cli("kill", "host0")
    assert connect(testbed, "host1", HEAD, 6379, timeout=1) != "ok"
    testbed.cli("join", "host0", timeout=300)
    alive = {n["node_ip"] for n in testbed.nodes() if n["state"] == "ALIVE"}
    assert set(HOST_IPS) <= alive
