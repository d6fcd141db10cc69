"""Shared fixtures: a tiny random open_clip model saved as a real checkpoint, real photos from
scikit-image, and an environment that can never reach the network or a user's caches."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# huggingface_hub reads these once, when it is first imported (by open_clip, by a test module as it
# is collected): set before anything can import it, or the per-test settings below come too late and
# a test could reach the hub or a user's cache
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="searchlite-tests-hf-")

import pytest  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    """Import one of scripts/*.py as a module (the scripts use only the public API)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


write_samples = load_script("make_sample_photos").write_samples

# a tiny random CLIP that open_clip builds in well under a second; the kill loop builds it too
from tests.kill_loop import TINY_CONFIG  # noqa: E402



@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory):
    """The same for fixtures of any scope: a module's shared index is made before the per-test
    setting below, and would otherwise export its towers to (and take int8 verdicts from) the
    user's cache, which later tests of this run do not see."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
        patch.setenv("SEARCHLITE_CACHE", str(tmp_path_factory.getbasetemp() / "searchlite_cache"))
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the user's caches or reaches a hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    # exported towers are per model, shared by this run's tests (each random model has its own key)
    monkeypatch.setenv("SEARCHLITE_CACHE", str(tmp_path_factory.getbasetemp() / "searchlite_cache"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("SEARCHLITE_INDEX", raising=False)


@pytest.fixture
def faster_structure(monkeypatch: pytest.MonkeyPatch):
    """optimize() keeps whichever of IVF and HNSW answers faster on this machine at this moment;
    a test that needs one of them says which measures faster."""
    from searchlite.storage.ann_build import Tuner

    def prefer(kind: str) -> None:
        monkeypatch.setattr(Tuner, "median_seconds", lambda self, queries: 0.001 if self.kind == kind else 1.0)

    return prefer


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a tiny random CLIP, saved the way users save real ones."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("tiny_model")
    config = root / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CONFIG))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CONFIG)
    checkpoint = root / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos (scikit-image's) as JPEG and PNG files in nested folders with awkward names."""
    root = tmp_path_factory.mktemp("photos_master")
    write_samples(root)
    return root


@pytest.fixture
def photos(photo_dir: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the photo folder for one test."""
    dest = tmp_path / "photos"
    shutil.copytree(photo_dir, dest)
    return dest


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def engine_factory(tiny_model: tuple[Path, Path], index_dir: Path):
    """Open SearchEngines on the test index with the tiny model; closes them afterwards."""
    from searchlite import SearchEngine

    config, checkpoint = tiny_model
    opened = []

    def make(**kwargs):
        kwargs.setdefault("model", str(config))
        kwargs.setdefault("pretrained", str(checkpoint))
        engine = SearchEngine.open(kwargs.pop("index", index_dir), **kwargs)
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        engine.close()


def decoder_processes() -> list[int]:
    """Pids of this process's children that run searchlite's image decoder (reads Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"searchlite.media.decode_worker" in cmdline:
            found.append(int(entry))
    return found
