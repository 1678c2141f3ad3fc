import os

# Ray reads this when it is first imported: keep every test node and worker on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import TINY  # noqa: E402

from began_dist.cli import main  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: longer end-to-end runs")
    config.addinivalue_line("markers", "ray: runs on the session's real Ray cluster")
    config.addinivalue_line("markers", "testbed: runs on the session's emulated multi-host cluster (root; last)")
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    # Testbed tests run last: their cluster starts after the one-host cluster is gone (2 cores).
    items.sort(key=lambda item: item.get_closest_marker("testbed") is not None)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def train_cli(tmp_path):
    """Run `began-dist train` in-process on a tiny config; returns (exit code, run dir)."""

    def run(*overrides, run_dir=None, resume=False):
        run_dir = str(run_dir or tmp_path / "run")
        if resume:
            args = ["train", "--resume", run_dir, *overrides]
        else:
            args = ["train", *TINY, f"run.dir={run_dir}", *overrides]
        return main(args), run_dir

    return run


@pytest.fixture(scope="session", autouse=True)
def data_cache_dir(tmp_path_factory):
    """The node-local record of verified shards goes to the session's temporary tree, not ~/.cache."""
    saved = os.environ.get("BEGAN_DIST_CACHE_DIR")
    os.environ["BEGAN_DIST_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield os.environ["BEGAN_DIST_CACHE_DIR"]
    os.environ.pop("BEGAN_DIST_CACHE_DIR") if saved is None else os.environ.update(BEGAN_DIST_CACHE_DIR=saved)


@pytest.fixture(scope="module")
def s3_store():
    """A fresh moto S3 server on 127.0.0.1 with a bucket (tests/moto_store.py), stopped afterwards;
    the AWS credentials it takes are in the environment meanwhile."""
    from moto_store import CREDENTIALS, MotoStore, moto_available

    if not moto_available():
        pytest.skip("moto is not installed: pip install -e .[testbed]")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in CREDENTIALS.items():
            patch.setenv(key, value)
        store = MotoStore()
        try:
            yield store
        finally:
            store.stop()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real Ray cluster for the whole session, all on 127.0.0.1, with token auth.

    A head (1 CPU, dashboard on 127.0.0.1) and three worker nodes (1 CPU and one
    `train_slot` each): training workers ask for a slot, so two of them land on two
    different worker nodes and the third node is spare capacity for failure tests.
    """
    import secrets
    import socket
    import sys

    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    token_file = tmp_path_factory.mktemp("ray-auth") / "token"
    token_file.write_text(secrets.token_hex(32))
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PATH")}
    os.environ.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        # Job drivers start from the head's environment: let them find `began-dist`.
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    from ray._raylet import Config

    Config.initialize("")  # re-read RAY_AUTH_MODE in this process, as Ray's own token setup does
    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            # The head's agent serves `ray job submit`: not Ray's fixed default port, which another
            # cluster on this machine may hold (the agent then runs without it: "No available agent").
            "dashboard_agent_listen_port": free_port(),
        },
    )
    workers = [
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", resources={"train_slot": 1}) for _ in range(3)
    ]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    cluster.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    cluster.training_nodes = workers

    def stop():
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    _one_host_cluster_stops.append(stop)
    try:
        yield cluster
    finally:
        stop_one_host_cluster()


_one_host_cluster_stops: list = []


def stop_one_host_cluster() -> None:
    """Stop the session's one-host cluster now (idempotent): the testbed tests come after it."""
    while _one_host_cluster_stops:
        _one_host_cluster_stops.pop()()


@pytest.fixture(scope="session")
def testbed_session():
    """One `cluster/testbed` for the session (tests/testbed_support.py); down even if a test fails.

    In CI (CI=true) a testbed that cannot start fails the test; elsewhere it skips saying why.
    """
    from testbed_support import Testbed, unavailable

    reason = unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the testbed cannot start in CI: {reason}")
        pytest.skip(reason)
    stop_one_host_cluster()
    bed = Testbed()
    try:
        yield bed.up()
    finally:
        bed.down()


@pytest.fixture
def testbed(testbed_session):
    """The session's testbed, reset after each test: limits off, killed hosts replaced."""
    yield testbed_session
    testbed_session.reset()


@pytest.fixture(scope="module")
def testbed_client(testbed_session):
    """`cluster/testbed env` as a client on the machine sees it, with its AWS_* variables set in this
    process (so this process reads and writes the testbed's store)."""
    env = testbed_session.client_env()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            if key.startswith("AWS_"):
                patch.setenv(key, value)
        yield env
