"""Text queries without torch: the exported numpy text tower and the torch-free tokenizer give what
open_clip gives, and anything they cannot do falls back to torch with the same answers."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from searchlite import SearchEngine
from searchlite.config import model_cache_dir
from searchlite.text import tower as text_tower
from searchlite.text.tokenizer import ClipTokenizer

from .conftest import TINY_CONFIG

ODD_TEXTS = [*text_tower.CHECK_TEXTS, "\x00\x01 control", "ﬁ ligature Ⅻ", "Ｆｕｌｌ ｗｉｄｔｈ", "tab\tnew\nline", "s'  'S 'T"]


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cache of exported towers for this test alone (some tests damage it)."""
    monkeypatch.setenv("SEARCHLITE_CACHE", str(tmp_path / "cache"))


def _export(engine: SearchEngine) -> Path:
    """Where the model's text tower is kept: the user's cache, once per model."""
    return model_cache_dir(engine.model_key()) / text_tower.FILENAME


def _random_texts(n: int) -> list[str]:
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 .,;!?'\"&<>()-_ éüßçøåæ 日本語 한국어 Ελληνικά кириллица 🐶🌳"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(n)]


@pytest.mark.parametrize("context_length", [77, 16])
def test_tokenizer_gives_open_clips_tokens(context_length: int) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    texts = ODD_TEXTS + _random_texts(500)
    ours = ClipTokenizer(context_length)(texts)
    theirs = SimpleTokenizer(context_length=context_length)(texts).numpy()
    mismatched = [t for t, a, b in zip(texts, ours, theirs) if not np.array_equal(a, b)]
    assert not mismatched


def _hits(engine: SearchEngine, text: str) -> list[tuple[str, float]]:
    return [(h.path, round(h.score, 4)) for h in engine.search(text, k=5)]


def test_an_index_run_exports_the_text_tower_and_queries_then_skip_torch(engine_factory, photos, index_dir) -> None:
    engine = engine_factory()
    engine.index(photos)
    assert _export(engine).is_file() and not (index_dir / text_tower.FILENAME).exists()
    torch_answers = {t: _hits(engine, t) for t in ("a cat", "rocket launch", "café")}
    torch_vectors = engine.embed_text(list(ODD_TEXTS))

    fresh = SearchEngine.open(index_dir)  # as a later command opens it: no flags, nothing loaded
    try:
        assert {t: _hits(fresh, t) for t in torch_answers} == torch_answers
        cosines = (fresh.embed_text(list(ODD_TEXTS)) * torch_vectors).sum(axis=1)
        assert cosines.min() >= 0.9999
        assert not fresh.model_loaded  # the torch model was never loaded
    finally:
        fresh.close()


def test_a_cold_cli_text_query_imports_neither_torch_nor_onnxruntime(engine_factory, photos, index_dir) -> None:
    engine = engine_factory()
    engine.index(photos)
    expected = [h.path for h in engine.search("a cat", k=3)]
    code = (  # main() ends the process after running the exit handlers: one reports the modules
        "import atexit, sys\nfrom searchlite.cli import main\n"
        "atexit.register(lambda: print(sorted({'torch', 'onnxruntime'} & set(sys.modules)) or 'neither torch nor onnxruntime', file=sys.stderr))\n"
        "main()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "query", "a cat", "-k", "3", "--index", str(index_dir), "--json"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().endswith("neither torch nor onnxruntime")  # a one-off query sets up nothing
    assert [json.loads(line)["path"] for line in run.stdout.splitlines()] == expected


def _tiny_variant(tmp_path: Path, **changes) -> tuple[Path, Path]:
    """A tiny random CLIP like the shared one with some config changes, saved as users save one."""
    import open_clip
    import torch

    config = json.loads(json.dumps(TINY_CONFIG))
    for key, value in changes.items():
        if key in ("ls_init_value",):
            config["text_cfg"][key] = value
        else:
            config[key] = value
    torch.manual_seed(1)
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(config))
    checkpoint = tmp_path / "variant.pt"
    torch.save(open_clip.CLIP(**config).state_dict(), checkpoint)
    return path, checkpoint


def _torch_embeddings(engine: SearchEngine, texts: list[str]) -> np.ndarray:
    return engine.load_model().encode_texts(texts)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_text_queries_run_in_numpy_first_then_in_onnxruntime_with_torchs_answers(
    engine_factory, photos, index_dir, tmp_path, quick_gelu: bool
) -> None:
    config, checkpoint = _tiny_variant(tmp_path, quick_gelu=quick_gelu)
    engine = engine_factory(model=str(config), pretrained=str(checkpoint))
    engine.index(photos)
    texts = list(ODD_TEXTS) + _random_texts(30)
    reference = _torch_embeddings(engine, texts)
    tower = text_tower.TextTower.load(_export(engine), engine.model_key())
    assert tower is not None

    first = tower.encode_texts(texts)  # a one-off query: numpy, nothing set up
    assert not tower.uses_onnx
    second = tower.encode_texts(texts)  # sets onnxruntime up, checked against numpy's answer
    assert tower.uses_onnx
    third = tower.encode_texts(texts)
    one = tower.encode_texts(texts[:1])  # one short text: the case a warm query is
    for vectors in (first, second, third):
        assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
        assert (vectors * reference).sum(axis=1).min() >= 0.9999
    assert float(one[0] @ reference[0]) >= 0.9999


def test_after_an_index_run_text_queries_use_the_export_not_the_loaded_torch_model(engine_factory, photos) -> None:
    engine = engine_factory()
    engine.index(photos)
    expected = _torch_embeddings(engine, ["a cat", "a dog"])
    assert (engine.embed_text(["a cat"]) @ expected[0]) >= 0.9999
    assert (engine.embed_text(["a dog"]) @ expected[1]) >= 0.9999
    assert engine.text_encoder().uses_onnx


def test_when_onnxruntime_fails_or_drifts_numpy_keeps_answering(engine_factory, photos, index_dir, monkeypatch, caplog) -> None:
    import searchlite.text.onnx

    engine = engine_factory()
    engine.index(photos)
    texts = ["a cat", "a dog on grass", "café"]
    reference = _torch_embeddings(engine, texts)

    class Broken:
        def __init__(self, *args: object) -> None:
            raise RuntimeError("onnxruntime cannot load here")

    class Drifting(searchlite.text.onnx.OnnxTransformer):
        def __call__(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return super().__call__(x, mask)[:, ::-1]  # tokens reversed: the wrong hidden states

    for replacement, message in ((Broken, "cannot run"), (Drifting, "drifts")):
        monkeypatch.setattr(text_tower, "OnnxTransformer", replacement)
        tower = text_tower.TextTower.load(_export(engine), engine.model_key())
        caplog.clear()
        with caplog.at_level("INFO", logger="searchlite.text.tower"):
            answers = [tower.encode_texts(texts) for _ in range(3)]
        assert not tower.uses_onnx
        assert message in caplog.text
        for vectors in answers:
            assert (vectors * reference).sum(axis=1).min() >= 0.9999


def test_many_threads_querying_while_onnxruntime_is_set_up_all_get_the_same_answers(engine_factory, photos, index_dir) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = engine_factory()
    engine.index(photos)
    texts = [f"photo number {i}" for i in range(16)]
    reference = _torch_embeddings(engine, texts)
    with SearchEngine.open(index_dir) as fresh, ThreadPoolExecutor(8) as pool:
        vectors = list(pool.map(lambda text: fresh.embed_text([text])[0], texts))
        assert fresh.text_encoder().uses_onnx
    assert (np.stack(vectors) * reference).sum(axis=1).min() >= 0.9999


def test_a_text_tower_it_cannot_run_is_not_exported_and_torch_answers(engine_factory, photos, index_dir, tmp_path) -> None:
    config, checkpoint = _tiny_variant(tmp_path, ls_init_value=0.5)  # layer scale: not in searchlite/text/tower.py
    engine = engine_factory(model=str(config), pretrained=str(checkpoint))
    engine.index(photos)
    expected = _hits(engine, "a cat")
    assert not _export(engine).exists()
    with SearchEngine.open(index_dir) as fresh:
        assert _hits(fresh, "a cat") == expected
        assert fresh.model_loaded


def test_a_damaged_or_foreign_export_is_replaced_and_answers_stay_the_same(engine_factory, photos, index_dir, tmp_path) -> None:
    engine = engine_factory()
    engine.index(photos)
    expected = _hits(engine, "a cat")
    export = _export(engine)
    good = export.read_bytes()

    def usable() -> bool:
        return text_tower.TextTower.load(export, engine.model_key()) is not None

    export.write_bytes(good[: len(good) // 2])  # cut short
    with SearchEngine.open(index_dir) as fresh:
        assert _hits(fresh, "a cat") == expected
        assert fresh.model_loaded  # torch answered ...
    assert usable()  # ... and wrote a whole export again

    other_index = tmp_path / "other"
    config, checkpoint = _tiny_variant(tmp_path, quick_gelu=True)
    other = engine_factory(index=other_index, model=str(config), pretrained=str(checkpoint))
    other.index(photos)
    export.write_bytes(_export(other).read_bytes())  # another model's tower
    with SearchEngine.open(index_dir) as fresh:
        assert _hits(fresh, "a cat") == expected
    assert usable()


def test_when_the_export_cannot_be_written_queries_still_answer(engine_factory, photos, index_dir, monkeypatch) -> None:
    import searchlite.text.export as export

    real_write = export.write_atomic

    def full_for_the_export(path: Path, data: bytes) -> None:
        if path.name == text_tower.FILENAME:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(export, "write_atomic", full_for_the_export)
    engine = engine_factory()
    engine.index(photos)
    expected = _hits(engine, "a cat")
    with SearchEngine.open(index_dir) as fresh:
        assert _hits(fresh, "a cat") == expected
    assert not _export(engine).exists()
