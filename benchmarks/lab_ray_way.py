"""Ray's own way to get one file to many nodes, run inside a lab host (``castray lab exec``):
the file is put as chunk objects on this node, then a task on every receiving node ``ray.get``s
each chunk (Ray pulls it from whichever node has a copy), writes it to disk and hashes it, as
a CastRay recipient does. Prints the seconds from the tasks' launch to the last one's end
(putting the file is not counted), then the nodes' BLAKE3s, which must all be the file's.

    python -m benchmarks.lab_ray_way FILE CHUNK_BYTES NODE_IP [NODE_IP ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import blake3
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0)
def fetch(refs: list[ray.ObjectRef], directory: str) -> str:
    """Every chunk in order, one at a time (memory stays one chunk), to a file on disk."""
    hasher = blake3.blake3()
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".ray-way-", delete=True) as out:
        for ref in refs:
            chunk = ray.get(ref)
            out.write(chunk)
            hasher.update(chunk)
            del chunk
        out.flush()
    return str(hasher.hexdigest())


def main() -> None:
    path, chunk_bytes, ips = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    ray.init(logging_level="warning")
    node_ids = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    data = path.read_bytes()
    refs = [ray.put(data[i : i + chunk_bytes]) for i in range(0, len(data), chunk_bytes)]
    expected = blake3.blake3(data).hexdigest()
    del data
    started = time.perf_counter()
    tasks = [
        fetch.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_ids[ip], soft=False)
        ).remote(refs, tempfile.gettempdir())
        for ip in ips
    ]
    digests = ray.get(tasks)
    seconds = time.perf_counter() - started
    assert all(d == expected for d in digests), "a node's copy is not the file"
    print(f"{seconds:.3f}")


if __name__ == "__main__":
    main()
