"""`began-dist prepare ... --workers N [--address A]`: shards written by Ray tasks, on any host.

Each shard is one task running `began_dist.data.prepare.write_one`, which renders its
slice of the source and writes the shard straight to OUT (a path every host sees, or an
object store URI); the driver writes the manifest after the last task, from the entries
the tasks return. A shard's bytes depend only on its task, so the output is the one a
single process writes (the same sha256s). Without an address a local Ray cluster on
127.0.0.1 is started and stopped, as `train --workers` does.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

from began_dist.distributed.ray_train import connect


def ray_runner(workers: int, address: str = "") -> Callable:
    """A `write_dataset` runner: at most `workers` shard tasks at once (1 CPU each)."""

    def run(tasks: list[tuple], total: int, label: str) -> list[tuple[dict, dict]]:
        import ray

        from began_dist.data.prepare import write_one

        started_here = connect(address)
        try:
            # max_retries=0: a bad source fails alike on any host. SPREAD: the shards' reads and
            # writes go through as many hosts' links and disks as there are tasks at once.
            write = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD")(write_one)
            pending, results, progress = {}, {}, tqdm(total=total, desc=label, unit="img")
            queue = list(enumerate(tasks))
            try:
                while queue or pending:
                    while queue and len(pending) < workers:
                        index, task = queue.pop(0)
                        pending[write.remote(task)] = index
                    done, _ = ray.wait(list(pending), num_returns=1)
                    index = pending.pop(done[0])
                    results[index] = ray.get(done[0])
                    progress.update(results[index][0]["count"])
            finally:
                progress.close()
            return [results[i] for i in range(len(tasks))]
        finally:
            if started_here:
                ray.shutdown()

    return run
