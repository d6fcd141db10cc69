"""Indexing through Ray on one machine: the same photos indexed locally and through a local Ray
cluster (one node with this machine's CPUs, every process on 127.0.0.1), images/s of each and Ray's
overhead. Rounds alternate the two (each into a new index): on a shared machine the speed drifts, and
medians of alternating rounds compare like with like. Prints JSON.

    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 python scripts/bench_ray.py --images 200   # default model
    python scripts/bench_ray.py --model tiny.json --pretrained tiny.pt               # any model

A Ray run's time includes starting its actors (a process each, loading the exported tower); the
connection to the cluster is made once, before the rounds, as a long-lived driver would.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# every Ray process on loopback, no usage reports (read when ray is imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
# as installed, every process runs from compiled bytecode (each actor would otherwise compile
# searchlite's modules again, on a machine that sets this)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import make_photos  # noqa: E402

from searchlite import SearchEngine  # noqa: E402
from searchlite.config import IndexSettings  # noqa: E402


def timed_index(engine: SearchEngine, photos: Path, **options) -> tuple[float, int]:
    """(img/s of the whole run, images encoded)."""
    started = time.perf_counter()
    report = engine.index(photos, **options)
    return report.encoded / (time.perf_counter() - started), report.encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--model")
    parser.add_argument("--pretrained")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="the Ray node's CPUs (its actors)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import ray
    import ray._private.services as services
    from ray.cluster_utils import Cluster

    # a node waits a fixed 30 s for its raylet to register: too little on a busy machine
    get_node = services.get_node

    def patient_get_node(*a, **kw):
        deadline = time.monotonic() + 240
        while True:
            try:
                return get_node(*a, **kw)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    services.get_node = patient_get_node

    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        make_photos(photos, args.images, (args.width, args.height))
        settings = IndexSettings()
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": args.cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "object_store_memory": 200 * 2**20})
        try:
            ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="ERROR")
            local, remote = [], []
            for i in range(args.rounds):
                for kind in ("local", "ray"):
                    with SearchEngine.open(Path(tmp) / f"{kind}{i}", model=args.model, pretrained=args.pretrained, settings=settings) as engine:
                        engine.image_encoder()  # export the tower (once) and load it before the clock starts
                        if kind == "local":
                            rate, n = timed_index(engine, photos)
                            local.append(rate)
                        else:
                            rate, n = timed_index(engine, photos, ray=cluster.address)
                            remote.append(rate)
            result = {
                "model": engine.spec.describe(),
                "images": n,
                "image_size": [args.width, args.height],
                "cpus": os.cpu_count(),
                "ray_actors": args.cpus,
                "local_img_per_s": round(statistics.median(local), 2),
                "ray_img_per_s": round(statistics.median(remote), 2),
                "ray_overhead": round(1 - statistics.median(remote) / statistics.median(local), 3),
                "rounds": args.rounds,
                "local_runs": [round(x, 2) for x in local],
                "ray_runs": [round(x, 2) for x in remote],
            }
        finally:
            ray.shutdown()
            cluster.shutdown()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
