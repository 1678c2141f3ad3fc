"""An emulated cluster of separate hosts on one Linux machine (root): see cluster/README.md.

    cluster/testbed up N [--cpus C] [--object-store-mb M] [--owner PID]
    cluster/testbed env | status | exec HOST -- CMD... | kill HOST | partition HOST SECONDS
    cluster/testbed limit HOST RATE|off | join [HOST] | down

Each host is a network namespace (a veth `eth0` into the bridge `begantb0`, an address in
198.18.0.0/24, no default route) plus a mount, PID and UTS namespace whose PID 1 is this
file's `_init`: the machine's files read-only, a private writable /tmp, /mnt (its local
disk; HOME=/mnt/home) and /dev/shm. host0 is the Ray head (job API with token auth); the
others join it. An S3 store (moto) listens on the bridge. A daemon (`_daemon`) holds the
machine-wide lock and serves the store; `up` refuses while it lives and cleans up after a
dead one. This is test infrastructure, so it lives outside the `began_dist` package.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path("/run/began-testbed")  # fixed: one testbed per machine; not under /tmp, which hosts replace
DISKS = STATE / "disks"  # hostK/{tmp,mnt}: each host's private writable directories, hidden from the others
NETNS_PREFIX = "began-tb-"
BRIDGE = "begantb0"
VETH_PREFIX = "begantb-h"  # root-namespace end of host K's veth (interface names are limited to 15 chars)
IFNAME = "eth0"  # the host end, the same name in every host (GLOO_SOCKET_IFNAME)
SUBNET = "198.18.0"  # from 198.18.0.0/15 (RFC 2544, network benchmarking): never routed anywhere
BRIDGE_IP = f"{SUBNET}.1"
STORE_PORT = 9000
GCS_PORT = 6379
JOB_API_PORT = 8265
BUCKET = "testbed"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testbed", "AWS_SECRET_ACCESS_KEY": "testbed-secret"}
# The head runs drivers (job entrypoints, Train controllers, nested Tune trials asking for 0.01 CPU),
# so it needs some CPU, and Ray only takes whole node resources. It gets 1 CPU and no `train_slot`;
# the other hosts offer one `train_slot` per CPU (as cluster/local.sh), so training run with
# `run.worker_resources.train_slot=1` never lands on the head.
HEAD_CPUS = 1
# Ray's health checks (defaults: period 3 s, timeout 10 s, 5 failures, i.e. 15-60 s to declare a
# node dead). A killed host should be noticed within a test's patience, yet a loaded 2-core machine
# must not lose healthy nodes: every 2 s, 2 s timeout, dead after 5 misses -> 10-20 s.
HEALTH = {
    "health_check_initial_delay_ms": 2000,
    "health_check_period_ms": 2000,
    "health_check_timeout_ms": 2000,
    "health_check_failure_threshold": 5,
}
WAIT_S = 180  # bound on every wait for a host, a node or the store


class TestbedError(RuntimeError):
    pass


# ---------------------------------------------------------------- helpers


def sh(*cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode:
        raise TestbedError(f"{shlex.join(cmd)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def host_index(name: str) -> int:
    match = re.fullmatch(r"host(\d+)", name)
    if not match:
        raise TestbedError(f"no such host {name!r} (hosts are host0, host1, ...)")
    return int(match.group(1))


def host_ip(index: int) -> str:
    if not 0 <= index < 240:
        raise TestbedError("at most 240 hosts")
    return f"{SUBNET}.{10 + index}"


def netns(index: int) -> str:
    return f"{NETNS_PREFIX}host{index}"


def veth(index: int) -> str:
    return f"{VETH_PREFIX}{index}"


def store_uri() -> str:
    return f"s3://{BUCKET}/store?region={REGION}&scheme=http&endpoint_override={BRIDGE_IP}:{STORE_PORT}"


def job_api() -> str:
    return f"http://{host_ip(0)}:{JOB_API_PORT}"


def client_env() -> dict[str, str]:
    """What a client on the machine (outside every host) needs; `env` prints it."""
    return {
        "RAY_ADDRESS": job_api(),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(STATE / "auth_token"),
        **CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "BEGAN_TESTBED_STORE": store_uri(),
    }


def load_state() -> dict:
    try:
        return json.loads((STATE / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def save_state(state: dict) -> None:
    tmp = STATE / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, STATE / "state.json")


class StateLock:
    """Serialises commands that change the testbed (kill, join, partition's restore, down)."""

    def __enter__(self):
        STATE.mkdir(parents=True, exist_ok=True)
        self.handle = open(STATE / "state.lock", "w")
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return load_state()
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TestbedError(f"{STATE}/state.lock held for {WAIT_S} s") from None
                time.sleep(0.2)

    def __exit__(self, *exc):
        self.handle.close()


def host_env(state: dict, name: str) -> dict[str, str]:
    """The environment of every process in a host: the invoking interpreter's venv first on PATH."""
    env = {
        "PATH": state["venv_bin"] + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/mnt/home",  # private: the host's local disk, set here, never mounted over the real HOME
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "HOSTNAME": name,
        "RAY_ADDRESS": f"{host_ip(0)}:{GCS_PORT}",  # inside a host: the cluster (GCS) address
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(STATE / "auth_token"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "GLOO_SOCKET_IFNAME": IFNAME,  # gloo would otherwise resolve the hostname
        **CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "BEGAN_TESTBED_STORE": store_uri(),
        "BEGAN_TESTBED_HOST": name,
    }
    if state.get("pythonpath"):
        env["PYTHONPATH"] = state["pythonpath"]
    return env


def pid_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def netns_pids(name: str) -> list[int]:
    result = sh("ip", "netns", "pids", name, check=False)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def our_namespaces() -> list[str]:
    listing = sh("ip", "netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listing if line.startswith(NETNS_PREFIX)]


def our_links() -> list[str]:
    names = []
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == BRIDGE or name.startswith(VETH_PREFIX):
            names.append(name)
    return names


def kill_namespace_processes(ns: str, init_pid: int | None = None) -> None:
    """SIGKILL every process of a host: its PID namespace's init (the kernel then kills the whole
    namespace) and anything else in its network namespace (launchers, `exec` callers)."""
    if init_pid:
        try:
            os.kill(init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while pids := netns_pids(ns):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise TestbedError(f"{ns}: processes {pids} survive SIGKILL")
        time.sleep(0.1)


# ---------------------------------------------------------------- teardown


def teardown(quiet: bool = False) -> list[str]:
    """Remove everything a testbed made, live or left over by a dead owner. Idempotent."""
    done = []
    for ns in our_namespaces():
        kill_namespace_processes(ns)
        sh("ip", "netns", "del", ns, check=False)
        done.append(f"namespace {ns}")
    daemon = load_state().get("daemon")
    if daemon and pid_start_time(daemon["pid"]) == daemon["start"]:
        os.kill(daemon["pid"], signal.SIGKILL)
        done.append(f"daemon {daemon['pid']}")
    for link in our_links():
        sh("ip", "link", "del", link, check=False)
        done.append(f"link {link}")
    if STATE.exists():
        for path in STATE.iterdir():
            if path.name in ("lock", "state.lock"):
                continue
            if path.is_dir() and not path.is_symlink():
                sh("rm", "-rf", "--one-file-system", str(path), timeout=120)
            else:
                path.unlink(missing_ok=True)
    if not quiet:
        print("removed: " + (", ".join(done) if done else "nothing (no testbed)"))
    return done


# ---------------------------------------------------------------- hosts


def write_hosts_file(state: dict) -> None:
    """One /etc/hosts for every host (bind-mounted, rewritten in place so joins show up)."""
    lines = ["127.0.0.1 localhost", f"{BRIDGE_IP} store"]
    lines += [f"{host_ip(h['index'])} {name}" for name, h in sorted(state["hosts"].items())]
    path = STATE / "etc_hosts"
    with open(path, "r+" if path.exists() else "w") as handle:
        handle.seek(0)
        handle.truncate()
        handle.write("\n".join(lines) + "\n")


def create_host(state: dict, index: int) -> None:
    """Network namespace, veth into the bridge, private disks, and the PID/mount/UTS namespaces."""
    name, ns, outer = f"host{index}", netns(index), veth(index)
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", outer, "type", "veth", "peer", "name", IFNAME, "netns", ns)
    sh("ip", "link", "set", outer, "master", BRIDGE, "up")
    sh("ip", "-n", ns, "addr", "add", f"{host_ip(index)}/24", "dev", IFNAME)
    sh("ip", "-n", ns, "link", "set", IFNAME, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    disk = DISKS / name
    sh("rm", "-rf", "--one-file-system", str(disk))
    for sub in ("tmp", "mnt/home"):
        (disk / sub).mkdir(parents=True)
    (disk / "tmp").chmod(0o1777)
    host = state["hosts"][name] = {"index": index, "ip": host_ip(index), "alive": False}
    write_hosts_file(state)
    log = open(STATE / f"{name}.init.log", "w")
    launcher = subprocess.Popen(
        ["ip", "netns", "exec", ns, "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
         "--propagation", "private", "--kill-child=SIGKILL",
         sys.executable, os.path.abspath(__file__), "_init", name, str(disk), str(state["shm_mb"])],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while "ready" not in (STATE / f"{name}.init.log").read_text():
        if launcher.poll() is not None or time.monotonic() > deadline:
            raise TestbedError(f"{name} did not start: {(STATE / f'{name}.init.log').read_text()}")
        time.sleep(0.1)
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    init_pid = int(children[0])
    host.update(init_pid=init_pid, init_start=pid_start_time(init_pid), alive=True)


def _paths_under_tmp() -> list[str]:
    """The venv, the checkout and PYTHONPATH entries that lie under /tmp (outermost only)."""
    candidates = [os.path.dirname(os.path.dirname(os.path.abspath(sys.executable))),  # the venv
                  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # the checkout
    candidates += [entry for entry in os.environ.get("PYTHONPATH", "").split(":") if entry]
    found: list[str] = []
    for path in sorted({os.path.realpath(c) for c in candidates} | {os.path.abspath(c) for c in candidates}):
        if path.startswith("/tmp/") and os.path.isdir(path) and not any(path.startswith(k + "/") for k in found):
            found.append(path)
    return found


def host_init(name: str, disk: str, shm_mb: int) -> None:
    """PID 1 of a host: build its filesystem view, then reap orphans (Ray daemonises) forever."""
    import socket

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True)

    socket.sethostname(name)
    # The interpreter, its venv and the checkout the hosts run may live under the machine's /tmp
    # (a fresh clone, a CI workspace): the private /tmp would hide them, so they are bound to a
    # staging point first and bound back, read-only, at the same path inside the private /tmp.
    keep = _paths_under_tmp()
    staged = []
    for index, path in enumerate(keep):
        stage = STATE / "keep" / name / str(index)
        stage.mkdir(parents=True, exist_ok=True)
        mount("--bind", path, str(stage))
        staged.append((stage, path))
    own = {"/tmp", "/mnt", "/dev/shm", "/etc/hosts", str(DISKS)}
    # Machine mounts first, read-only like a container image; a bind made later from a
    # read-only mount would inherit the flag, so the private mounts come after.
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        fstype = fields[fields.index("-") + 1]
        if point.startswith(("/proc", "/sys", "/dev")) or fstype == "nsfs" or point in own:
            continue
        subprocess.run(["mount", "-o", "remount,bind,ro", point], check=False)
    mount("--bind", f"{disk}/tmp", "/tmp")
    mount("-o", "remount,bind,rw", "/tmp")
    for stage, path in staged:
        os.makedirs(path, exist_ok=True)
        mount("--bind", str(stage), path)
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=False)
    mount("--bind", f"{disk}/mnt", "/mnt")
    mount("-o", "remount,bind,rw", "/mnt")
    mount("-t", "tmpfs", "-o", f"size={shm_mb}m,mode=1777", "tmpfs", "/dev/shm")
    mount("--bind", "-o", "ro", str(STATE / "etc_hosts"), "/etc/hosts")
    mount("-t", "tmpfs", "-o", "ro,size=4k", "tmpfs", str(DISKS))  # the other hosts' disks
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


def nsenter(state: dict, name: str, cmd: list[str], cwd: str | None = None) -> list[str]:
    host = state["hosts"][name]
    if not host["alive"] or pid_start_time(host["init_pid"]) != host["init_start"]:
        raise TestbedError(f"{name} is down (killed); `join {name}` brings it back")
    env = [f"{k}={v}" for k, v in host_env(state, name).items()]
    # The caller's directory when the host has it (the machine's files are visible read-only).
    enter = 'cd "$0" 2>/dev/null || cd "$HOME"; exec "$@"'
    return ["nsenter", "-t", str(host["init_pid"]), "-n", "-m", "-u", "-p", "--",
            "env", "-i", *env, "sh", "-c", enter, cwd or os.getcwd(), *cmd]  # fmt: skip


def ray_start(state: dict, name: str) -> subprocess.Popen:
    ip = host_ip(host_index(name))
    common = [f"--node-ip-address={ip}", f"--object-store-memory={state['object_store_mb'] * 2**20}",
              "--disable-usage-stats"]  # fmt: skip
    if name == "host0":
        cmd = ["ray", "start", "--head", f"--port={GCS_PORT}", f"--num-cpus={HEAD_CPUS}", "--include-dashboard=true",
               f"--dashboard-host={ip}",
               f"--dashboard-port={JOB_API_PORT}", f"--system-config={json.dumps(HEALTH)}", *common]  # fmt: skip
    else:
        cmd = ["ray", "start", f"--address={host_ip(0)}:{GCS_PORT}", f"--num-cpus={state['cpus']}",
               f"--resources={json.dumps({'train_slot': state['cpus']})}", *common]  # fmt: skip
    log = open(STATE / f"{name}.ray-start.log", "w")
    return subprocess.Popen(nsenter(state, name, cmd, cwd="/"), stdout=log, stderr=subprocess.STDOUT)


def wait_started(procs: dict[str, subprocess.Popen]) -> None:
    for name, proc in procs.items():
        try:
            code = proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        if code != 0:
            tail = (STATE / f"{name}.ray-start.log").read_text()[-3000:]
            raise TestbedError(f"ray start on {name}: exit {code}:\n{tail}")


def alive_nodes(state: dict) -> list[dict]:
    script = (
        "import json, ray; ray.init(address='auto', logging_level='ERROR', log_to_driver=False);"
        "print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]))"
    )
    result = subprocess.run(nsenter(state, "host0", ["python", "-c", script], cwd="/"),
                            capture_output=True, text=True, timeout=WAIT_S)  # fmt: skip
    if result.returncode:
        raise TestbedError(f"listing nodes on host0: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_nodes(state: dict, ips: set[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ips <= set(seen := alive_nodes(state)):
        if time.monotonic() > deadline:
            raise TestbedError(f"Ray nodes {sorted(ips - set(seen))} not alive after {WAIT_S} s")
        time.sleep(1)


# ---------------------------------------------------------------- commands


def cmd_up(args) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE, 0o755)
    lock = open(STATE / "lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = load_state().get("daemon", {}).get("pid", "?")
        print(f"a testbed is up (daemon PID {owner}); run: cluster/testbed down", file=sys.stderr)
        return 1
    if teardown(quiet=True):
        print("cleaned the leftovers of a testbed whose owner died", file=sys.stderr)
    if args.hosts < 1:
        raise TestbedError("up N: N >= 1 hosts (host0 is the head)")
    token = STATE / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)  # hosts run as root; other users of the machine get no job API
    state = {
        "hosts": {},
        "cpus": args.cpus,
        "object_store_mb": args.object_store_mb,
        "shm_mb": max(512, 2 * args.object_store_mb),
        "venv_bin": os.path.dirname(sys.executable),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        log = open(STATE / "daemon.log", "w")
        owner = [] if args.owner is None else ["--owner", str(args.owner)]
        daemon = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_daemon", "--lock-fd", str(lock.fileno()), *owner],
            pass_fds=(lock.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        state["daemon"] = {"pid": daemon.pid, "start": pid_start_time(daemon.pid)}
        save_state(state)
        for index in range(args.hosts):
            create_host(state, index)
        save_state(state)
        deadline = time.monotonic() + WAIT_S
        while "store ready" not in (STATE / "daemon.log").read_text():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise TestbedError(f"the store did not start: {(STATE / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.2)
        wait_started({"host0": ray_start(state, "host0")})
        wait_started({name: ray_start(state, name) for name in state["hosts"] if name != "host0"})
        wait_nodes(state, {h["ip"] for h in state["hosts"].values()})
    except BaseException:
        print(f"up failed; tearing down (logs were in {STATE})", file=sys.stderr)
        teardown(quiet=True)
        raise
    print(f"testbed up: {args.hosts} hosts (host0 = head at {host_ip(0)}), store {store_uri()}")
    print(f'clients: eval "$({Path(__file__).with_suffix("")} env)"')
    return 0


def daemon_main(lock_fd: int, owner: int | None) -> None:
    """Hold the lock (inherited fd) and serve the store; with --owner, tear down when it dies."""
    import boto3
    from moto.server import ThreadedMotoServer

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    server = ThreadedMotoServer(ip_address=BRIDGE_IP, port=STORE_PORT, verbose=False)
    server.start()
    s3 = boto3.client("s3", endpoint_url=f"http://{BRIDGE_IP}:{STORE_PORT}", region_name=REGION, **{
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]})  # fmt: skip
    s3.create_bucket(Bucket=BUCKET)
    print("store ready", flush=True)
    owner_start = pid_start_time(owner) if owner else None
    while not stop:
        if owner and pid_start_time(owner) != owner_start:
            print(f"owner {owner} exited: tearing down", flush=True)
            with StateLock():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # teardown() kills this daemon last
                state = load_state()
                state.pop("daemon", None)
                save_state(state)
                teardown()
            break
        time.sleep(1)
    server.stop()
    os.close(lock_fd)


def require_up() -> dict:
    state = load_state()
    if not state.get("hosts"):
        raise TestbedError("no testbed is up (cluster/testbed up N)")
    return state


def cmd_env(args) -> int:
    require_up()
    for key, value in client_env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_status(args) -> int:
    state = require_up()
    for host in state["hosts"].values():
        host["alive"] = host["alive"] and pid_start_time(host["init_pid"]) == host["init_start"]
    print(json.dumps({"hosts": state["hosts"], "env": client_env()}, indent=1))
    return 0


def cmd_exec(args) -> int:
    state = require_up()
    host_index(args.host)
    if args.host not in state["hosts"]:
        raise TestbedError(f"no such host {args.host}")
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise TestbedError("exec HOST -- CMD: no command")
    try:
        argv = nsenter(state, args.host, cmd)
    except TestbedError as error:
        print(f"testbed: {error}", file=sys.stderr)
        return 255  # like ssh when it cannot reach the host
    result = subprocess.run(argv)
    return result.returncode if result.returncode >= 0 else 128 - result.returncode


def cmd_kill(args) -> int:
    with StateLock() as state:
        host = state.get("hosts", {}).get(args.host)
        if host is None:
            raise TestbedError(f"no such host {args.host}")
        live = pid_start_time(host["init_pid"]) == host["init_start"]
        kill_namespace_processes(netns(host["index"]), host["init_pid"] if live else None)
        sh("ip", "link", "set", veth(host["index"]), "down")
        host["alive"] = False
        save_state(state)
    print(f"killed {args.host}: every process SIGKILLed, link down")
    return 0


def forget_neighbours(state: dict) -> None:
    """Drop every host's ARP cache: addresses that failed to resolve during a partition, or
    that moved to a new host's MAC on a join, would otherwise stay wrong for seconds."""
    sh("ip", "neigh", "flush", "dev", BRIDGE, check=False)
    for host in state["hosts"].values():
        sh("ip", "-n", netns(host["index"]), "neigh", "flush", "all", check=False)


def set_link(state: dict, name: str, up: bool) -> None:
    host = state["hosts"][name]
    if up and not host["alive"]:
        return  # killed meanwhile: its link stays down
    sh("ip", "link", "set", veth(host["index"]), "up" if up else "down")
    if up:
        forget_neighbours(state)


def cmd_partition(args) -> int:
    state = require_up()
    if args.host not in state["hosts"]:
        raise TestbedError(f"no such host {args.host}")
    with StateLock() as state:
        set_link(state, args.host, up=False)
    print(f"{args.host} cut off for {args.seconds:g} s", flush=True)
    try:
        time.sleep(args.seconds)
    finally:
        with StateLock() as state:
            set_link(state, args.host, up=True)
    print(f"{args.host} reconnected")
    return 0


RATE = re.compile(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)", re.I)
RATE_BYTES = {"bit": 1 / 8, "kbit": 125, "mbit": 125e3, "gbit": 125e6, "bps": 1, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9}


def cmd_limit(args) -> int:
    state = require_up()
    if args.host not in state["hosts"]:
        raise TestbedError(f"no such host {args.host}")
    index = state["hosts"][args.host]["index"]
    # tbf shapes egress only: the bridge end shapes traffic to the host, eth0 traffic from it.
    ends = [[veth(index)], ["-n", netns(index), IFNAME]]
    for end in ends:
        *where, dev = end
        if args.rate == "off":
            sh("tc", *where, "qdisc", "del", "dev", dev, "root", check=False)
            continue
        match = RATE.fullmatch(args.rate)
        if not match:
            raise TestbedError(f"limit: rate {args.rate!r}: use tc units, e.g. 100mbit, 1gbit, 10mbps, or off")
        per_s = float(match.group(1)) * RATE_BYTES[match.group(2).lower()]
        burst = max(64 * 1024, int(per_s / 100))  # >= a GSO segment, and 10 ms at the rate
        sh("tc", *where, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", args.rate,
           "burst", str(burst), "latency", "100ms")  # fmt: skip
    print(f"{args.host}: " + ("no limit" if args.rate == "off" else f"links capped at {args.rate} each way"))
    return 0


def cmd_join(args) -> int:
    with StateLock() as state:
        if not state.get("hosts"):
            raise TestbedError("no testbed is up (cluster/testbed up N)")
        if args.host:
            name = args.host
            index = host_index(name)
            old = state["hosts"].get(name)
            if old and old["alive"] and pid_start_time(old["init_pid"]) == old["init_start"]:
                raise TestbedError(f"{name} is up; join brings back a killed host or adds a new one")
        else:
            index = max(h["index"] for h in state["hosts"].values()) + 1
            name = f"host{index}"
        if name in state["hosts"]:  # a killed host: a fresh machine in its place (empty disks)
            kill_namespace_processes(netns(index))
            sh("ip", "netns", "del", netns(index), check=False)
            sh("ip", "link", "del", veth(index), check=False)
        create_host(state, index)
        save_state(state)
        forget_neighbours(state)
        restart, stops = [name], []
        if name == "host0":  # a new head: the surviving hosts' Ray must join it afresh
            restart += [n for n, h in state["hosts"].items() if n != "host0" and h["alive"]]
            stops = [subprocess.Popen(nsenter(state, other, ["ray", "stop", "--force"], cwd="/"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for other in restart[1:]]  # fmt: skip
        started = ray_start(state, name)
        for stop in stops:
            stop.wait(timeout=WAIT_S)
        wait_started({name: started})
        wait_started({n: ray_start(state, n) for n in restart[1:]})
        wait_nodes(state, {state["hosts"][n]["ip"] for n in restart})
    print(f"{name} joined at {host_ip(index)}")
    return 0


def cmd_down(args) -> int:
    with StateLock():
        teardown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster/testbed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start host0 (head) .. host{N-1} and the store")
    up.add_argument("hosts", type=int)
    up.add_argument("--cpus", type=int, default=1, help="CPUs of each non-head host (default 1)")
    up.add_argument("--object-store-mb", type=int, default=100, help="Ray object store per host (default 100)")
    up.add_argument("--owner", type=int, help="tear the testbed down when this PID exits (tests)")
    sub.add_parser("env", help='exports for clients on this machine: eval "$(cluster/testbed env)"')
    sub.add_parser("status", help="hosts and client environment as JSON")
    ex = sub.add_parser("exec", help="run a command in a host; returns its exit status (255: host down)")
    ex.add_argument("host")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    kill = sub.add_parser("kill", help="SIGKILL every process of a host and take its link down")
    kill.add_argument("host")
    part = sub.add_parser("partition", help="cut a host's link for SECONDS (blocks), then restore it")
    part.add_argument("host")
    part.add_argument("seconds", type=float)
    lim = sub.add_parser("limit", help="cap a host's link (tbf, both directions) or remove the cap")
    lim.add_argument("host")
    lim.add_argument("rate")
    join = sub.add_parser("join", help="add host{N}, or bring a killed HOST back as a fresh machine")
    join.add_argument("host", nargs="?")
    sub.add_parser("down", help="remove every namespace, link, process and file of the testbed")
    init = sub.add_parser("_init")
    init.add_argument("name")
    init.add_argument("disk")
    init.add_argument("shm_mb", type=int)
    daemon = sub.add_parser("_daemon")
    daemon.add_argument("--lock-fd", type=int, required=True)
    daemon.add_argument("--owner", type=int)
    args = parser.parse_args(argv)
    if args.command == "_init":
        host_init(args.name, args.disk, args.shm_mb)
        return 0
    if args.command == "_daemon":
        daemon_main(args.lock_fd, args.owner)
        return 0
    if os.geteuid() != 0:
        print("cluster/testbed needs root (network, mount and PID namespaces)", file=sys.stderr)
        return 2
    try:
        return globals()[f"cmd_{args.command}"](args)
    except TestbedError as error:
        print(f"testbed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
