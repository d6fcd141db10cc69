"""Encoding on a Ray cluster: the EncodeStage of `index(folder, ray=ADDRESS)`.

The driver (this process) scans, diffs, reads and hashes as a local run does; only files that need
encoding go to the cluster, a batch per Ray actor task. Each actor holds one model: on a cluster with
GPUs, one actor per GPU (num_gpus=1) runs the torch model; otherwise one actor per CPU runs the
torch-free image tower exported on the driver (image_tower.py), loaded from the driver's cache folder
when the actor sees it (a shared home) and else from the bytes the driver put in the object store.
Actors decode in their own decoder processes (decode_worker.py: the same limits and verdicts as a
local run), read files by path when they see the driver's files (probed per actor on a file the
driver hashed, or forced with shared_fs) and otherwise get their bytes from the driver. Results come
back to the driver, which commits batch by batch in order (indexer._Run): an interrupted run loses
only the batches in flight. An actor lost with its node costs the batches it held, which go to
another actor; the run fails only when no actor is left.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import IndexSettings
from ..errors import ClusterError, ImageDecodeError
from ..media.embed_files import decode_options
from ..models.image_tower import ImageTower
from ..storage.hashing import content_hash

if TYPE_CHECKING:
    from ..models.hub import ModelHub
    from .encoding import Prepared

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # to reach a cluster's address before giving up
TASKS_PER_ACTOR = 2  # batches queued on each actor: one encoding, one waiting
# images per task on a CPU actor (one core each): its throughput is flat from 8 on, and small tasks
# keep every actor busy to the end of a run (with 32, one actor finished the last batches alone)
CPU_ACTOR_BATCH_SIZE = 8
START_TIMEOUT_S = 600.0  # for a first actor to start (a process, loading the model)
START_GRACE_S = 60.0  # then for the others (those the cluster has no room for now are dropped)
LOOPBACK = ("127.0.0.1", "localhost", "::1")

# A model for the actors: {"kind": "tower", "key", "folder", "names", "format", "files": [ObjectRef]} or
# {"kind": "torch", "spec", "device", "precision"}
ModelRecipe = dict[str, Any]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError("indexing on a Ray cluster needs Ray: pip install 'searchlite[ray]'") from None
    return ray


def connect(address: str) -> bool:
    """Connect this process to the Ray cluster at address: "auto" (the cluster this machine belongs
    to), "ray://host:port" (Ray Client) or "host:port" (its GCS). Returns whether this call made the
    connection (then disconnect() ends it). Raises ClusterError at once when nothing answers there."""
    address = address.strip()
    host_port = address[len("ray://"):] if address.startswith("ray://") else address
    loopback = False
    if address != "auto":
        host, _, port = host_port.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ClusterError(f"Ray address {address}: give auto, ray://HOST:PORT or HOST:PORT", setting="ray")
        loopback = host in LOOPBACK
        _probe(host, int(port), address)
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if loopback:
        _stay_on_loopback()
    if address == "auto":
        address = _auto_address(ray)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": False}
    if loopback and not address.startswith("ray://"):
        kwargs["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {_first_line(e)}", setting="ray") from None
    return True


def _stay_on_loopback() -> None:
    """Ray replaces a loopback address with the machine's interface address unless told that this
    is a single-machine cluster (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when ray is imported):
    a cluster on 127.0.0.1 is one, whatever the environment said."""
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # another Ray: its own defaults
        pass


def disconnect() -> None:
    ray = _import_ray()
    ray.shutdown()


def _auto_address(ray: Any) -> str:
    """The address "auto" means: $RAY_ADDRESS, else the cluster last started on this machine."""
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - an internal API: fall back to saying none was found
            address = None
    if not address:
        raise ClusterError("no Ray cluster runs on this machine: start one (ray start --head) or give its address", setting="ray")
    if address.startswith("ray://") or ":" in address:
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if port.isdigit():
            _probe(host.strip("[]"), int(port), address)
    return address


def _probe(host: str, port: int, address: str) -> None:
    """A TCP connection to the cluster's port within CONNECT_TIMEOUT_S, or ClusterError."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({reason}): check the address and that the cluster runs",
                           setting="ray") from None


class RayEncoding:
    """The EncodeStage that sends batches to model actors on a Ray cluster (see the module's doc).

    models: the index's model hub, whose ray_recipe(gpu) the actors load and whose image encoder
    (the driver's own) sets the decoding options by its image size and preprocessing. shared_fs: True reads files by path on
    the workers, False sends their bytes, None probes each actor.

    Images only, each with its own vector (kind "image", no parts): the run decodes and encodes
    videos on the driver (encoding.LocalEncoding), and writer.IndexWriter refuses regions on Ray."""

    videos = False  # videos stay on the driver

    def __init__(
        self,
        settings: IndexSettings,
        models: ModelHub,
        shared_fs: bool | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.shared_fs = shared_fs
        self.device: str | None = None
        self.actors: list[Any] = []  # alive
        self.by_path: dict[Any, bool] = {}  # actor -> reads files by path
        self.load: dict[Any, int] = {}  # actor -> batches it holds
        self.lost = 0
        self._all: list[Any] = []  # every actor started, for close()
        self._started = False

    def batch_size(self) -> int:
        device = self.device or "cpu"
        if self.settings.batch_size or device.startswith("cuda"):
            return self.settings.batch_size_on(device)
        return CPU_ACTOR_BATCH_SIZE

    def chunks_ahead(self) -> int:
        return 1  # reading and hashing go on while the cluster encodes

    def batches_in_flight(self) -> int:
        return TASKS_PER_ACTOR * max(1, len(self.actors))

    def prepare(self, p: Prepared, data: bytes) -> Prepared:
        p.tensor = data  # decoded on the cluster
        return p

    def _start(self, probe: Prepared) -> None:
        """Create the actors (the first time a batch is sent); probe probes the shared filesystem."""
        ray = _import_ray()
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        gpu = gpus > 0
        self.device = "cuda" if gpu else "cpu"
        self.options = decode_options(self.settings, self.models.image_encoder())
        recipe = self.models.ray_recipe(gpu)
        if gpu:
            count, threads = gpus, max(1, min(8, cpus // gpus - 1))
            actor_options = {"num_gpus": 1, "num_cpus": 1, "max_concurrency": 2}  # decode one batch while encoding another
        else:
            count, threads = max(1, cpus), 1
            actor_options = {"num_cpus": 1}
        actor_class = ray.remote(max_restarts=0, max_task_retries=0, **actor_options)(EncodeActor)
        actors = self._all = [actor_class.remote(self.settings, self.options, threads) for _ in range(count)]
        # each actor loads the model (the tower from the driver's folder, if it sees it) and says
        # whether it reads the driver's files
        started = self._each(actors, lambda a: a.start.remote(recipe, probe.file.path, probe.content_hash))
        short = [a for a, (loaded, _) in started.items() if not loaded]
        if short:  # the tower's files, sent once through the object store to the actors that lack them
            folder = Path(recipe["folder"])
            files = ray.put({name: (folder / name).read_bytes() for name in recipe["names"]})
            loaded = self._each(short, lambda a: a.start_from.remote([files]))  # in a list: not resolved by Ray
            started = {a: v for a, v in started.items() if a in loaded or a not in short}
        self.actors = list(started)
        if not self.actors:
            raise ClusterError(f"no encoding actor could start on the Ray cluster: {self._last_error}")
        self.by_path = {a: can_read if self.shared_fs is None else self.shared_fs for a, (_, can_read) in started.items()}
        self.load = {a: 0 for a in self.actors}
        log.info("encoding on %d Ray actor(s) (%s), %d reading files by path", len(self.actors), self.device,
                 sum(self.by_path.values()))
        self._started = True

    _last_error = ""

    def _each(self, actors: list[Any], call: Callable[[Any], Any]) -> dict[Any, Any]:
        """call(actor) on each actor -> {actor: its result}, without the actors that died."""
        ray = _import_ray()
        refs = {call(a): a for a in actors}
        ready, late = ray.wait(list(refs), num_returns=1, timeout=START_TIMEOUT_S)
        if ready and late:
            more, late = ray.wait(late, num_returns=len(late), timeout=START_GRACE_S)
            ready += more
        results = {}
        for ref in ready:
            try:
                results[refs[ref]] = ray.get(ref)
            except ray.exceptions.RayError as e:
                self._lose(refs[ref], e)
                ray.kill(refs[ref])
        for ref in late:
            self._lose(refs[ref], TimeoutError("did not start in time (the cluster may lack room for it)"))
            ray.kill(refs[ref])
        return results

    def _lose(self, actor: Any, error: BaseException) -> None:
        self._last_error = _first_line(error)
        if actor in self.actors or not self._started:  # said once per actor, not once per batch it held
            log.warning("lost a Ray actor (%s); its batches go to the others", self._last_error)
        if actor in self.actors:
            self.actors.remove(actor)
            self.lost += 1
        self.load.pop(actor, None)
        self.by_path.pop(actor, None)

    def _send(self, batch: list[Prepared]) -> tuple[Any, Any]:
        if not self.actors:
            raise ClusterError(f"every Ray actor was lost (last: {self._last_error}); run the same command again to resume")
        actor = min(self.actors, key=lambda a: self.load[a])
        self.load[actor] += 1
        items = [(p.file.path, None if self.by_path[actor] else p.tensor, p.content_hash) for p in batch]
        return actor, actor.encode.remote(items)

    def submit(self, batch: list[Prepared]) -> Callable[[], None]:
        if not self._started:
            self._start(batch[0])
        ray = _import_ray()
        actor, ref = self._send(batch)

        def wait() -> None:
            nonlocal actor, ref
            while True:
                try:
                    vectors, verdicts = ray.get(ref)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.ActorUnavailableError) as e:
                    self._lose(actor, e)
                    actor, ref = self._send(batch)  # again, elsewhere
                except ray.exceptions.RayTaskError as e:
                    raise ClusterError(f"encoding failed on the Ray cluster: {_first_line(e)}") from None
            if actor in self.load:
                self.load[actor] -= 1
            row = 0
            for p, verdict in zip(batch, verdicts):
                if verdict[0] == "ok":
                    p.vector, p.width, p.height = vectors[row], verdict[1], verdict[2]
                    p.metadata = verdict[3].with_mtime(p.file.mtime_ns)
                    row += 1
                elif verdict[0] == "error":
                    p.error, p.by_settings = verdict[1], True
                else:
                    p.changing = True
                p.tensor = b""  # the bytes are no longer needed (still marks "was to encode")

        return wait

    def cancel(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._all:
            return
        ray = _import_ray()
        for actor in self._all:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._all, self.actors, self.by_path, self.load = [], [], {}, {}


class EncodeActor:
    """One model on a Ray worker (made an actor by RayEncoding): decodes and encodes batches."""

    def __init__(self, settings: IndexSettings, options: dict[str, Any], threads: int) -> None:
        from ..media.decode_worker import DecodePool

        self.settings = settings
        self.options = options
        self.threads = threads
        self.encoder: Any = None
        self.decoders = DecodePool(threads, settings.decode_timeout_s, settings.decoder_memory_limit)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="searchlite-decode")

    def start(self, recipe: ModelRecipe, path: str, digest: str) -> tuple[bool, bool]:
        """Load the model; (whether it is loaded, whether this worker sees the driver's file at
        path): a tower not in the driver's folder here waits for start_from."""
        if recipe["kind"] == "tower":
            self.key, self.names, self.format = recipe["key"], recipe["names"], recipe["format"]
            self.encoder = self._load_tower(Path(recipe["folder"]))
        else:
            self.encoder = _load_torch(recipe, self.threads)
        return self.encoder is not None, self.can_read(path, digest)

    def start_from(self, files: list[Any]) -> bool:
        """Load the tower from its files' bytes ([an ObjectRef of {name: bytes}])."""
        import ray

        folder = Path(tempfile.mkdtemp(prefix="searchlite-tower-"))
        try:
            for name, data in ray.get(files[0]).items():
                (folder / name).write_bytes(data)
            self.encoder = self._load_tower(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # onnxruntime has read or mapped it
        if self.encoder is None:
            raise RuntimeError("the exported image tower sent by the driver cannot be loaded")
        return True

    def _load_tower(self, folder: Path) -> ImageTower | None:
        """The driver's exported tower (float32 or int8: the recipe's names and format) in folder."""
        return ImageTower.load(folder, self.key, self.threads, filename=self.names[0], fmt=self.format)

    def can_read(self, path: str, digest: str) -> bool:
        """Whether this worker sees the driver's file at path (same content)."""
        try:
            with open(path, "rb") as f:
                return content_hash(f.read()) == digest
        except OSError:
            return False

    def encode(self, items: list[tuple[str, bytes | None, str]]) -> tuple[np.ndarray | None, list[tuple[Any, ...]]]:
        """(path, bytes or None to read path, content hash) each -> (the vectors of the files
        decoded, in order; a verdict per file: ("ok", width, height), ("error", reason) or
        ("changing",) for a file whose content is no longer the one the driver hashed)."""
        # "ok" verdicts carry the header metadata (media/metadata.py) as a fourth item
        decoded = list(self.pool.map(self._decode, items))
        tensors = [d[1] for d in decoded if d[0] == "ok"]
        vectors = self.encoder.encode_images(tensors) if tensors else None
        return vectors, [d[:1] + d[2:] for d in decoded]

    def _decode(self, item: tuple[str, bytes | None, str]) -> tuple[Any, ...]:
        path, data, digest = item
        if data is None:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                return ("changing", None)
            if content_hash(data) != digest:
                return ("changing", None)
        try:
            with self.decoders.worker() as decoder:
                image, meta = decoder.decode_with_metadata(data, **self.options, name=path)
            return ("ok", self.encoder.preprocess(image.image), image.width, image.height, meta)
        except ImageDecodeError as e:
            return ("error", None, str(e))
        except Exception as e:  # noqa: BLE001 - one bad file must never stop the run (as encoding.LocalEncoding)
            return ("error", None, f"cannot decode image: {type(e).__name__}: {e}")


def _load_torch(recipe: ModelRecipe, threads: int) -> Any:
    import torch

    from ..models.loading import load_encoder

    torch.set_num_threads(max(1, threads))
    encoder = load_encoder(recipe["spec"], recipe["device"])
    encoder.choose_precision(recipe["precision"])
    return encoder


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
