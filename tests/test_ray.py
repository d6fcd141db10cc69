"""Indexing on a Ray cluster: a real three-node cluster on this machine (a head and two worker nodes,
one CPU each), every process of it on the loopback address, the tiny model.

The cluster starts once for the module (Ray's start-up is the slow part); the test that removes a
worker node runs last."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests import kill_loop
from tests.conftest import load_script

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray: pip install 'searchlite[ray]'"),
]

# every Ray process on 127.0.0.1; no usage reports; room for start-up on a busy 2-core machine
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else Ray swaps 127.0.0.1 for the interface address
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_agent_register_timeout_ms": "180000",
    "RAY_raylet_start_wait_time_s": "180",
    "RAY_worker_register_timeout_seconds": "180",
}
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20, "node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in RAY_ENV.items():
            mp.setenv(name, value)
        import ray  # after RAY_ENV: Ray reads it on import
        import ray._private.services as services
        from ray.cluster_utils import Cluster

        # A node waits a fixed 30 s for its raylet to register, too little on a busy 2-core machine
        get_node = services.get_node

        def patient_get_node(*args, **kwargs):
            deadline, pause = time.monotonic() + 240, threading.Event()
            while True:
                try:
                    return get_node(*args, **kwargs)
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    pause.wait(0.5)

        mp.setattr(services, "get_node", patient_get_node)
        # the cluster's processes keep this environment: the tests' caches, never the user's
        mp.setenv("SEARCHLITE_CACHE", str(tmp_path_factory.getbasetemp() / "searchlite_cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        c = Cluster(initialize_head=True, connect=False, head_node_args={**NODE, "include_dashboard": False})
        workers = [c.add_node(**NODE) for _ in range(2)]
        c.wait_for_nodes()
        try:
            yield c, workers
        finally:
            if ray.is_initialized():
                ray.shutdown()
            c.shutdown()


def counts(report) -> tuple[int, ...]:
    return (report.added, report.updated, report.moved, report.removed, report.unchanged, report.encoded, report.reused,
            report.failed, report.skipped)


def cluster_pids() -> set[int]:
    """This test process's descendants: the cluster's processes and their workers."""
    return descendants(os.getpid())


def descendants(*roots: int) -> set[int]:
    """Every process below the roots (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def non_loopback_sockets() -> list[str]:
    """TCP sockets of the cluster's processes (and this one) bound to or talking to an address other
    than loopback, from `ss -tanp`."""
    pids = cluster_pids() | {os.getpid()}
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, check=True).stdout
    loopback = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]):\d+$")
    anywhere = re.compile(r"^(\*|0\.0\.0\.0|\[::\]):\*$")  # the peer of a listening socket
    bad = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if not owners & pids:
            continue
        fields = line.split()
        local, peer = fields[3], fields[4]
        if not loopback.match(local) or not (loopback.match(peer) or anywhere.match(peer)):
            bad.append(line)
    return bad


def test_index_on_ray_equals_a_local_index_and_stays_on_loopback(cluster, engine_factory, photos: Path, tmp_path: Path) -> None:
    c, _ = cluster
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)  # a JPEG header, then nothing
    shutil.copy(photos / "astronaut.jpg", photos / "astronaut copy.jpg")  # one content, encoded once
    videos = importlib.util.find_spec("av") is not None
    if videos:  # a video in a Ray run is decoded and encoded on the driver, into its shots
        load_script("make_shape_videos").write(photos / "clips", 1, seed=5, shots=(2, 2), seconds=(1.0, 1.0))
    seen: list[str] = []

    local = engine_factory(index=tmp_path / "local")
    local_report = local.index(photos)
    on_ray = engine_factory(index=tmp_path / "ray", settings=_settings(batch_size=3))

    def progress(done: int, total: int) -> None:
        if done == total:
            seen.extend(non_loopback_sockets())  # while the actors are up

    ray_report = on_ray.index(photos, progress=progress, ray=c.address)
    assert counts(ray_report) == counts(local_report)
    assert ray_report.failed == 1 and ray_report.skipped == 1 and ray_report.reused == 1
    assert on_ray.info()["videos"] == local.info()["videos"] == int(videos)
    kill_loop.assert_same_index(tmp_path / "ray", tmp_path / "local")
    assert seen == [], "\n".join(seen)


def test_second_run_on_ray_encodes_only_what_changed(cluster, engine_factory, photos: Path, tmp_path: Path) -> None:
    c, _ = cluster
    local = engine_factory(index=tmp_path / "local")
    on_ray = engine_factory(index=tmp_path / "ray", settings=_settings(batch_size=2))
    local.index(photos)
    on_ray.index(photos, ray=c.address, shared_fs=True)
    # a new photo, a deleted one, a moved one
    from PIL import Image

    Image.open(photos / "astronaut.jpg").rotate(90).save(photos / "turned astronaut.png")
    (photos / "misc" / "camera.gif").unlink()
    (photos / "space" / "rocket.jpeg").rename(photos / "rocket moved.jpeg")

    local_report = local.index(photos)
    ray_report = on_ray.index(photos, ray=c.address, shared_fs=False)  # the driver sends the bytes
    assert counts(ray_report) == counts(local_report)
    assert (ray_report.added, ray_report.removed, ray_report.moved, ray_report.encoded) == (1, 1, 1, 1)
    kill_loop.assert_same_index(tmp_path / "ray", tmp_path / "local")
    assert on_ray.index(photos, ray=c.address).summary().startswith("0 added, 0 updated, 0 moved, 0 removed, 10 unchanged")


def test_unreachable_cluster_is_one_line_at_once(engine_factory, photos: Path, index_dir: Path, tiny_model) -> None:
    from searchlite.cli import app
    from searchlite.errors import ClusterError

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config, checkpoint = tiny_model
    started = time.monotonic()
    result = CliRunner().invoke(
        app, ["index", str(photos), "--index", str(index_dir), "--model", str(config), "--pretrained", str(checkpoint),
              "--ray", f"ray://127.0.0.1:{port}"],
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Ray cluster at ray://127.0.0.1" in lines[0], result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 30
    engine = engine_factory()
    with pytest.raises(ClusterError, match="give auto"):
        engine.index(photos, ray="not an address")
    assert not (index_dir / "searchlite.db").exists()  # nothing was indexed, and no empty index is left


def test_ray_refuses_regions_in_one_line_before_connecting(engine_factory, photos: Path, index_dir: Path, tiny_model) -> None:
    """Region vectors come from the torch model's grid features on the driver: --ray with --regions
    (or on an index that keeps regions) is refused at once, with no cluster needed."""
    from searchlite.cli import app
    from searchlite.errors import InvalidInputError

    config, checkpoint = tiny_model
    result = CliRunner().invoke(
        app, ["index", str(photos), "--index", str(index_dir), "--model", str(config), "--pretrained", str(checkpoint),
              "--regions", "--ray", "127.0.0.1:1"],
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--ray cannot store region vectors" in lines[0], result.output
    engine = engine_factory(settings=_settings(regions=True))
    with pytest.raises(InvalidInputError, match="index without --ray"):
        engine.index(photos, ray="127.0.0.1:1")
    assert not (index_dir / "searchlite.db").exists()  # nothing was indexed, and no empty index is left


def test_an_interrupted_run_on_ray_keeps_its_committed_batches_and_resumes(cluster, engine_factory, photos: Path, tmp_path: Path) -> None:
    c, _ = cluster
    local = engine_factory(index=tmp_path / "local")
    local.index(photos)
    on_ray = engine_factory(index=tmp_path / "ray", settings=_settings(batch_size=1))

    def progress(done: int, total: int) -> None:
        if done >= 9:  # 3 actors hold 2 batches each: the first 3 batches are committed by now
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        on_ray.index(photos, progress=progress, ray=c.address)
    kept = on_ray.info()["images"]
    assert 0 < kept < 10  # the batches committed before the interruption; those in flight are lost
    report = on_ray.index(photos, ray=c.address)
    assert report.encoded == 10 - kept and report.unchanged == kept
    kill_loop.assert_same_index(tmp_path / "ray", tmp_path / "local")


def test_a_worker_node_lost_mid_run_costs_its_batches_not_the_run(cluster, engine_factory, photos: Path, tmp_path: Path, caplog) -> None:
    """The node goes as a machine does, its actor's process with it (a raylet killed alone leaves
    its workers answering for a while, long enough to finish a small run). The actor may hold no
    batch at that moment (it may have finished them): with many batches still to send after the
    kill, one goes to it (the least loaded actor gets the next batch), so the loss is met and that
    batch encoded elsewhere, whatever the timing."""
    c, workers = cluster
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(30):  # distinct contents, each a batch of its own
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photos / f"noise {i}.png")
    local = engine_factory(index=tmp_path / "local")
    local_report = local.index(photos)
    on_ray = engine_factory(index=tmp_path / "ray", settings=_settings(batch_size=1))
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if not killed and done >= 2:  # batches are out on the actors; 30 and more are still to send
            node = [p.pid for _, p in workers[0].live_processes()]
            doomed = set(node) | descendants(*node)
            c.remove_node(workers[0], allow_graceful=False)
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.append(total - done)

    with caplog.at_level(logging.WARNING, logger="searchlite.ingest.ray_stage"):
        ray_report = on_ray.index(photos, progress=progress, ray=c.address)
    assert killed and killed[0] >= 30
    lost = [r.getMessage() for r in caplog.records if "lost a Ray actor" in r.getMessage()]
    assert len(lost) == 1, lost  # one line for the one actor, however many batches it held
    assert counts(ray_report) == counts(local_report)
    kill_loop.assert_same_index(tmp_path / "ray", tmp_path / "local")


def _settings(**kwargs):
    from searchlite.config import IndexSettings

    return IndexSettings(**kwargs)
