"""Short, generic photo-search texts: what an index's approximate search is tuned on, embedded with
the index's own text tower (CLIP's text embeddings sit in another cone than its image embeddings,
so tuning on the indexed image vectors misjudges the recall text queries get)."""

from __future__ import annotations

_SUBJECTS = (
    "a dog", "a cat", "a horse", "a bird", "a cow", "a sheep", "a fish", "a butterfly", "a child", "a baby",
    "a woman", "a man", "an old man", "a group of friends", "a family", "a couple", "a crowd", "a bride",
    "a soccer player", "a runner", "a cyclist", "a surfer", "a skier", "a car", "a red car", "a bicycle",
    "a motorcycle", "a bus", "a train", "an airplane", "a boat", "a sailing ship", "a bridge", "a castle",
    "a church", "a skyscraper", "a house", "a lighthouse", "a tent", "a tree", "a flower", "a sunflower",
    "a rose", "a birthday cake", "a pizza", "a plate of pasta", "a cup of coffee", "a glass of wine",
    "a bowl of fruit", "a book", "a laptop", "a phone", "a guitar", "a piano", "a painting", "a statue",
    "a snowman", "a christmas tree", "fireworks", "a campfire", "a waterfall", "a mountain", "a volcano",
    "a lake", "a river", "a beach", "the sea", "a desert", "a forest", "a field of wheat", "a garden",
    "a city street", "a market", "a kitchen", "a living room", "a bedroom", "an office", "a classroom",
    "a playground", "a stadium", "a concert", "a wedding", "a birthday party", "a museum", "an airport",
)
_SETTINGS = (
    "at sunset", "in the snow", "in the rain", "at night", "on the beach", "in a park", "in the city",
    "in the mountains", "on a sunny day", "in black and white", "from above", "close up", "in autumn",
    "by the lake", "indoors", "on a table", "in the garden", "with friends", "in fog", "under a blue sky",
)
_STYLES = ("a photo of {}", "{}", "picture of {}", "{} {}")


def tuning_phrases() -> list[str]:
    """A fixed list of a few hundred texts (the same on every call, in the same order)."""
    phrases: list[str] = []
    for i, subject in enumerate(_SUBJECTS):
        for j in range(3):
            setting = _SETTINGS[(7 * i + 3 * j) % len(_SETTINGS)]
            style = _STYLES[(i + j) % len(_STYLES)]
            phrases.append(style.format(subject, setting) if style.count("{}") == 2 else style.format(f"{subject} {setting}"))
        phrases.append(f"a photo of {subject}")
    return list(dict.fromkeys(phrases))
