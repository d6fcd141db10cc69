"""The text tower shortcut (tokens up to end-of-text only), the text cache, and precision."""

from __future__ import annotations

import numpy as np
import torch

from searchlite.models.encoder import _truncatable
from searchlite.models.loading import load_encoder
from searchlite.models.spec import spec_from_flags
from searchlite.text.cache import TextCache

TEXTS = ["", "a", "a dog on grass", "a red car parked on the street at night " * 3, "word " * 200]  # the last is cut at 77 tokens


def test_encoding_only_up_to_end_of_text_matches_open_clip(tiny_model) -> None:
    config, checkpoint = tiny_model
    encoder = load_encoder(spec_from_flags(str(config), str(checkpoint)), "cpu")
    assert _truncatable(encoder.model)  # the shortcut is what is being tested
    ours = encoder.encode_texts(TEXTS)
    with torch.inference_mode():
        reference = encoder.model.encode_text(encoder.tokenize(TEXTS), normalize=True).numpy()
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    # one at a time (different lengths) gives the same as in a batch
    for text, vector in zip(TEXTS, ours):
        assert float(vector @ encoder.encode_texts([text])[0]) >= 0.99999


def test_repeated_texts_come_from_the_cache_and_the_oldest_leave_it() -> None:
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    cache = TextCache(size=3)
    first = cache.encode(["a cat", "a dog", "a cat"], encode)
    second = cache.encode(["a dog", "a bird"], encode)
    assert calls == [["a cat", "a dog"], ["a bird"]]
    np.testing.assert_array_equal(first[1], second[0])
    np.testing.assert_array_equal(first[0], first[2])
    cache.encode(["a fish"], encode)  # 4 texts seen, room for 3: "a cat" (least recent) goes
    cache.encode(["a cat", "a fish"], encode)
    assert calls[-1] == ["a cat"]


def test_precision_is_fp32_on_a_cpu_without_native_bf16_and_can_be_forced(tiny_model, monkeypatch) -> None:
    config, checkpoint = tiny_model
    encoder = load_encoder(spec_from_flags(str(config), str(checkpoint)), "cpu")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert encoder.choose_precision("auto") == "fp32"
    batch = list(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    fp32 = encoder.encode_images(batch)
    assert encoder.choose_precision("bf16") == "bf16"  # forced: kept whatever it costs
    bf16 = encoder.encode_images(batch)
    assert (fp32 * bf16).sum(axis=1).min() > 0.95 and not np.array_equal(fp32, bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    chosen = encoder.choose_precision("auto")  # a candidate: kept only if it matches fp32
    encoder.precision = "fp32"
    reference = encoder.encode_images(list(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))))
    encoder.precision = "bf16"
    candidate = encoder.encode_images(list(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))))
    assert chosen == ("bf16" if (reference * candidate).sum(axis=1).min() >= 0.999 else "fp32")


def test_inference_models_are_reparameterized_with_the_same_outputs() -> None:
    """MobileCLIP's FastViT trains with parallel branches that fuse into one conv for inference
    (1.5x faster here); training keeps them."""
    spec = spec_from_flags("MobileCLIP2-S0", None, random_init=True)
    torch.manual_seed(0)
    training = load_encoder(spec, "cpu", for_training=True)
    torch.manual_seed(0)
    inference = load_encoder(spec, "cpu")
    n_params = lambda encoder: sum(p.numel() for p in encoder.model.visual.parameters())  # noqa: E731
    assert n_params(inference) < n_params(training)
    batch = list(torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    training.model.eval()
    cosines = (training.encode_images(batch) * inference.encode_images(batch)).sum(axis=1)
    assert cosines.min() >= 0.99999


def test_batches_are_scaled_and_normalized_exactly_as_open_clips_preprocess_does(tiny_model) -> None:
    """preprocess() leaves ToTensor's scaling and Normalize to encode_images, once per batch."""
    from PIL import Image

    config, checkpoint = tiny_model
    encoder = load_encoder(spec_from_flags(str(config), str(checkpoint)), "cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((64, 64), (90, 70), (48, 200))]
    ours = [encoder.preprocess(img) for img in images]
    assert all(t.dtype == torch.uint8 for t in ours)  # the deferred path is what is being tested
    reference_preprocess = encoder.open_clip_transform  # the one open_clip built for this model
    with torch.inference_mode():
        reference = encoder.model.encode_image(torch.stack([reference_preprocess(img) for img in images]), normalize=True).numpy()
    assert np.array_equal(encoder.encode_images(ours), reference)
    gray = images[0].convert("L")  # not RGB: open_clip's own preprocessing, float tensors
    assert encoder.preprocess(gray).dtype == torch.float32
    assert np.array_equal(encoder.encode_images([encoder.preprocess(gray)]), encoder.encode_images([reference_preprocess(gray)]))



def _random_values_drawn(load):
    """(what load() returns, how many random numbers torch drew meanwhile)."""
    import math

    with torch.profiler.profile(record_shapes=True) as profile:
        result = load()
    fills = [e for e in profile.events() if e.name in ("aten::uniform_", "aten::normal_") and e.input_shapes]
    return result, sum(math.prod(e.input_shapes[0]) for e in fills)


def test_a_model_loaded_from_a_checkpoint_holds_its_weights_and_skips_drawing_random_ones(tiny_model) -> None:
    import json

    import open_clip

    config, checkpoint = tiny_model
    encoder, drawn = _random_values_drawn(lambda: load_encoder(spec_from_flags(str(config), str(checkpoint)), "cpu"))
    assert drawn < 0.01 * sum(p.numel() for p in encoder.model.parameters())  # the time it saves
    saved = torch.load(checkpoint, weights_only=True)
    state = encoder.model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[name], saved[name]) for name in saved)
    # what a checkpoint does not hold (the text tower's causal mask) is built as open_clip builds it
    buffers = dict(encoder.model.named_buffers())
    assert all(torch.equal(buffers[name], value) for name, value in open_clip.CLIP(**json.loads(config.read_text())).named_buffers())


def test_a_model_without_weights_starts_from_open_clips_random_ones(tiny_model) -> None:
    import json

    import open_clip

    config, _ = tiny_model
    torch.manual_seed(0)
    encoder = load_encoder(spec_from_flags(str(config), None, random_init=True), "cpu")
    torch.manual_seed(0)
    reference = open_clip.CLIP(**json.loads(config.read_text())).state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in encoder.model.state_dict().items())
