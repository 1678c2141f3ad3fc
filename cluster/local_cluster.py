"""Hold a multi-node Ray cluster on 127.0.0.1 in this process until SIGTERM/SIGINT (see local.sh).

`ray start --address` refuses to join when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and without
it Ray moves 127.0.0.1 to the machine's routable address; Ray's own `cluster_utils.Cluster`
starts every node from one process with loopback kept. Stopping this process stops exactly
the nodes it started.
"""

import argparse
import os
import signal
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when Ray is imported

from ray.cluster_utils import Cluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker nodes besides the head")
    parser.add_argument("--cpus-per-node", type=float, default=1)
    parser.add_argument("--port", type=int, default=6390, help="GCS port of the head")
    parser.add_argument("--dashboard-port", type=int, default=8265)
    parser.add_argument("--address-file", required=True, help="where to write the GCS address once up")
    args = parser.parse_args()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": args.cpus_per_node,
            "node_ip_address": "127.0.0.1",
            "gcs_server_port": args.port,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": args.dashboard_port,
        },
    )
    for _ in range(args.workers):
        cluster.add_node(num_cpus=args.cpus_per_node, node_ip_address="127.0.0.1", resources={"train_slot": 1})
    cluster.wait_for_nodes()

    def stop(*_):
        cluster.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(args.address_file, "w") as handle:
        handle.write(cluster.address + "\n")
    signal.pause()
    stop()


if __name__ == "__main__":
    main()
