"""Image decoding in child processes, so that a decoder that crashes, hangs or eats memory on a
hostile file costs one worker and one verdict ("failed"), never the indexing run.

Each child runs images.decode_rgb under a memory cap; the parent waits at most a time limit per
file, kills and replaces a child that crashed or overran, and retries a crashed file once. The
child also reads the file's header metadata (media/metadata.py) when asked: with the decode (plus a
perceptual hash of the decoded pixels), or alone, without decoding any pixel.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

from ..errors import ImageDecodeError
from .images import Decoded
from .metadata import ImageMetadata
from .safe_read import OpenedFile

# kwargs key of a request that also (WITH) or only (ONLY) wants the header metadata
_METADATA = "_metadata"
_WITH, _ONLY = "with", "only"
_BACKGROUND = "_background"  # a request to decode on cycles nothing else wants
# kwargs key of a request whose file comes as a descriptor passed over the socket (not as bytes),
# read by the child up to the byte cap given as the value (None: no cap)
_FD = "_fd"
from .video import Frames

log = logging.getLogger(__name__)

# a crash may be bad luck (the OOM killer picked the child); a second one is the file's doing
CRASH_ATTEMPTS = 2
# A background child that used less than STARVED_SHARE of a core over BACKGROUND_PATIENCE_S
# without answering is starved by other work on the machine: its request is decoded again by a
# foreground child, and the pool's later ones too.
BACKGROUND_PATIENCE_S = 5.0
STARVED_SHARE = 0.05


class DecodeCancelled(Exception):
    """The pool was closed while a decode was waiting (the run is being interrupted)."""


# The child is a fresh interpreter (not a multiprocessing child), so it never re-imports the
# embedding application's main module, and it shares no threads or locks with the parent.
_CHILD_CODE = "import sys; from searchlite.media.decode_worker import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"


def serve(fd: int, memory_limit: int) -> None:
    """The child's loop: receive (bytes, kwargs) on fd, reply with pixels or a reason."""
    conn = Connection(fd)
    sock = socket.socket(fileno=os.dup(fd))  # the same socket, for descriptors passed with requests
    import resource
    import signal
    import warnings

    from PIL import Image

    from .images import decode_rgb
    from .metadata import perceptual_hash, read_metadata_bytes

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    warnings.simplefilter("ignore")  # Pillow's warnings on odd files; verdicts say what matters
    if memory_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    Image.MAX_IMAGE_PIXELS = None  # decode_rgb's own max_pixels check applies instead
    background = False
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:  # asked to exit: nothing to tear down, and the parent waits for it
            os._exit(0)
        op, data, kwargs = message
        file = None
        if _FD in kwargs:  # the file comes as a descriptor: read here, under this process's memory cap
            cap = kwargs.pop(_FD)
            _, fds, _, _ = socket.recv_fds(sock, 1, 1)
            file = os.fdopen(fds[0], "rb")
        wanted = kwargs.pop(_METADATA, None)
        if kwargs.pop(_BACKGROUND, False) and not background:
            background = True
            _to_background()
        try:
            if file is not None and op != "video":
                from .safe_read import read_fd

                data = read_fd(file.fileno(), cap)
            if op == "video":
                from .video import sample_frames

                frames = sample_frames(data if file is None else file, **kwargs)
                pictures = [(img.size, img.convert("RGB").tobytes()) for img in frames.images]
                reply: tuple[Any, ...] = ("ok", frames.times, pictures, frames.width, frames.height, frames.duration)
            elif wanted == _ONLY:
                reply = ("meta", _header(data, read_metadata_bytes).to_dict())
            else:
                decoded = decode_rgb(data, **kwargs)
                reply = ("ok", decoded.width, decoded.height, decoded.image.size, decoded.image.tobytes())
                if wanted == _WITH:
                    meta = _header(data, read_metadata_bytes)
                    meta = dataclasses.replace(meta, width=decoded.width, height=decoded.height, phash=perceptual_hash(decoded.image))
                    reply += (meta.to_dict(),)
        except ImageDecodeError as e:
            reply = ("error", str(e), e.setting)
        except Exception as e:  # noqa: BLE001 - a video library's odd failure is one file's verdict
            if op != "video":
                raise
            reply = ("error", f"cannot read video: {type(e).__name__}: {e}")
        except MemoryError:
            reply = ("error", f"not enough memory to decode this {'video' if op == 'video' else 'image'}")
        finally:
            if file is not None:
                file.close()
            data = None
        try:
            conn.send(reply)
        except OSError:  # the parent is gone (killed or interrupted): nothing left to do
            return


def _to_background() -> None:
    """Run only on cycles nothing else on the machine wants (Linux's SCHED_IDLE; elsewhere the
    lowest priority). There is no way back without privileges: the parent starts a new child."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass


def _header(data: bytes, read: Any) -> ImageMetadata:
    """The header metadata of data; a file Pillow cannot open gets a reason."""
    try:
        return read(data)
    except Exception as e:  # noqa: BLE001 - any plugin's failure on a hostile header
        raise ImageDecodeError(f"cannot read the image header: {e}") from None


def _cpu_seconds(pid: int) -> float | None:
    """The CPU time a process has used (from Linux's /proc); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


class _Mode:
    """Whether decoders work in the background: shared by a pool's workers, so that one starved
    child brings them all to the foreground."""

    def __init__(self, background: bool) -> None:
        self.background = background


class DecodeWorker:
    """One child process, started on first use and replaced when it dies."""

    def __init__(self, time_limit: float, memory_limit: int | None, mode: _Mode | None = None) -> None:
        """mode: whether to decode in the background (see DecodePool); foreground when None."""
        self.time_limit = time_limit
        self.memory_limit = memory_limit
        self._mode = mode or _Mode(False)
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._asked = False  # to exit, by ask_to_exit
        self._in_background = False  # whether the child has gone to the background
        self.closed = False

    def decode(self, data: bytes | OpenedFile, **kwargs: Any) -> Decoded:
        """decode_rgb(data, **kwargs) in the child. data: the file's bytes, or the file opened
        (safe_read.open_checked), which the child reads itself, at most max_bytes of it. Raises
        ImageDecodeError with the reason."""
        return self._decode(data, kwargs)[0]

    def decode_with_metadata(self, data: bytes, **kwargs: Any) -> tuple[Decoded, ImageMetadata]:
        """decode(), and the file's header metadata with the perceptual hash of its pixels."""
        decoded, meta = self._decode(data, {**kwargs, _METADATA: _WITH})
        assert meta is not None
        return decoded, meta

    def read_metadata(self, data: bytes) -> ImageMetadata:
        """The header metadata of the image in data (no pixel is decoded). Raises ImageDecodeError."""
        reply = self._call("image", data, {_METADATA: _ONLY}, self.time_limit)
        return ImageMetadata(**reply[1])

    def _decode(self, data: bytes | OpenedFile, kwargs: dict[str, Any]) -> tuple[Decoded, ImageMetadata | None]:
        from PIL import Image

        _, width, height, size, pixels, *meta = self._call("image", data, kwargs, self.time_limit)
        return Decoded(Image.frombytes("RGB", size, pixels), width, height), (ImageMetadata(**meta[0]) if meta else None)

    def decode_video(self, data: bytes | OpenedFile, time_limit: float, **kwargs: Any) -> Frames:
        """video.sample_frames(data, **kwargs) in the child, within time_limit seconds (data: as
        decode's; an opened file is read by the child only as far as it needs). Raises
        ImageDecodeError with the reason."""
        from PIL import Image

        _, times, pictures, width, height, duration = self._call("video", data, kwargs, time_limit)
        return Frames(times, [Image.frombytes("RGB", size, pixels) for size, pixels in pictures], width, height, duration)

    def _call(self, op: str, data: bytes | OpenedFile, kwargs: dict[str, Any], time_limit: float) -> tuple[Any, ...]:
        """One request to the child; its reply, or ImageDecodeError with the reason."""
        opened = data if isinstance(data, OpenedFile) else None
        if opened is not None:
            data, kwargs = b"", {**{k: v for k, v in kwargs.items() if k != "max_bytes"}, _FD: kwargs.get("max_bytes")}
        reason = ""
        attempts = 0
        while attempts < CRASH_ATTEMPTS:
            background = self._mode.background and op == "image"  # videos take long, starved or not
            if self._in_background and not background:
                self.kill()  # a child cannot come back from the background: a new one
            conn = self._ensure_started()
            try:
                conn.send((op, data, {**kwargs, _BACKGROUND: True} if background else kwargs))
                if opened is not None:
                    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                        socket.send_fds(sock, [b"F"], [opened.fd])
                self._in_background |= background
                answered = self._wait(conn, time_limit, background)
                if answered is None:
                    log.info("decoding in the foreground: other work on this machine leaves the background decoders no time")
                    self._mode.background = False
                    continue  # the same request, in a new foreground child
                if not answered:
                    self.kill()
                    raise ImageDecodeError(f"decoding took longer than {time_limit:g}s; the file was skipped")
                reply = conn.recv()
            except (EOFError, OSError):
                if self.closed:
                    raise DecodeCancelled() from None
                code = self._exit_code()
                self.kill()
                reason = f"the image decoder crashed on this file (exit code {code})"
                attempts += 1
                continue
            if reply[0] == "error":
                raise ImageDecodeError(reply[1], setting=reply[2] if len(reply) > 2 else None)
            return reply
        raise ImageDecodeError(f"{reason}, {CRASH_ATTEMPTS} times")

    def _wait(self, conn: Connection, time_limit: float, background: bool) -> bool | None:
        """Whether the child answered within time_limit. A background child gives None instead
        when it is starved (see STARVED_SHARE) or out of time: only a foreground child's time-out
        is a verdict on the file."""
        if not background:
            return conn.poll(time_limit)
        assert self._process is not None
        deadline = time.monotonic() + time_limit
        while (left := deadline - time.monotonic()) > 0:
            before = _cpu_seconds(self._process.pid)
            if conn.poll(min(left, BACKGROUND_PATIENCE_S)):
                return True
            after = _cpu_seconds(self._process.pid)
            if before is None or after is None or after - before < STARVED_SHARE * BACKGROUND_PATIENCE_S:
                return None
        return None

    def start(self) -> None:
        """Start the child if it is not running."""
        self._ensure_started()

    def _ensure_started(self) -> Connection:
        if self.closed:
            raise DecodeCancelled()
        if self._conn is None or self._process is None or self._process.poll() is not None:
            self.kill()
            ours, theirs = socket.socketpair()
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, str(theirs.fileno()), str(self.memory_limit or 0)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            self._conn = Connection(ours.detach())
            self._asked = False
            if self.closed:  # cancel() ran while the child started
                self.kill()
                raise DecodeCancelled()
        return self._conn

    def _exit_code(self) -> int | None:
        try:
            return self._process.wait(5) if self._process else None
        except subprocess.TimeoutExpired:
            return None

    def cancel(self) -> None:
        """Kill the child at once (from another thread): a waiting decode raises DecodeCancelled."""
        self.closed = True
        process = self._process
        if process is not None:
            process.kill()

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None
        self._in_background = False

    def ask_to_exit(self) -> None:
        """Tell the child to exit when it is done (close() then waits for it)."""
        if self._conn is not None and self._process is not None and not self._asked:
            self._asked = True
            try:
                self._conn.send(None)
            except OSError:
                pass

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not within 2 s."""
        self.ask_to_exit()
        if self._process is not None:
            try:
                self._process.wait(2)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


class DecodePool:
    """A fixed set of DecodeWorkers shared by the indexing threads."""

    def __init__(self, size: int, time_limit: float, memory_limit: int | None, *, background: bool = False) -> None:
        """background: the children decode on cycles nothing else wants (Linux's SCHED_IDLE), so
        that they can work ahead while a model encodes on the same cores without slowing it; a
        child starved by other work hands its file to a new foreground child."""
        self._mode = _Mode(background)
        self._workers = [DecodeWorker(time_limit, memory_limit, self._mode) for _ in range(size)]
        self._free: queue.Queue[DecodeWorker] = queue.Queue()
        for worker in self._workers:
            self._free.put(worker)

    @property
    def background(self) -> bool:
        """Whether the children decode in the background (until one of them was starved)."""
        return self._mode.background

    def to_foreground(self) -> None:
        """Decode in the foreground from now on (children in the background are replaced)."""
        self._mode.background = False

    def start(self) -> None:
        """Start every child now (they are otherwise started on first use), so that their start-up
        overlaps whatever the caller does before the first decode, such as loading a model."""
        for worker in self._workers:
            worker.start()

    @contextmanager
    def worker(self) -> Iterator[DecodeWorker]:
        worker = self._free.get()
        try:
            yield worker
        finally:
            self._free.put(worker)

    def decode(self, data: bytes, **kwargs: Any) -> Decoded:
        """DecodeWorker.decode on whichever worker is free, held for this one decode only."""
        with self.worker() as worker:
            return worker.decode(data, **kwargs)

    def read_metadata(self, data: bytes) -> ImageMetadata:
        """DecodeWorker.read_metadata on whichever worker is free."""
        with self.worker() as worker:
            return worker.read_metadata(data)

    def cancel(self) -> None:
        """Kill every child at once (on interruption): waiting decodes raise DecodeCancelled."""
        for worker in self._workers:
            worker.cancel()

    def close(self) -> None:
        """Stop every child; call when no thread uses the pool any more."""
        for worker in self._workers:  # all at once: each child takes a while to exit
            worker.closed = True
            worker.ask_to_exit()
        for worker in self._workers:
            worker.close()
