"""Which image tower an index run encodes with (float32 or int8, on a CPU), and the record of it in
the index, so that its vectors never mix precisions without saying so.

`--precision auto` (the default) keeps the precision an index's vectors have. A new index takes the
verdict kept in the cache on the model's int8 tower (models/int8.py); where there is none, its first
run judges int8 on its own images: the stage holds the first int8.SAMPLE inputs (LocalEncoding),
encodes them with both towers, and this keeps int8 only if it passes, the sample's vectors coming
from the tower kept. Runs with fewer than int8.MIN_IMAGES files to encode keep float32 without
judging (the check would cost them more than int8 saves). An int8 index whose int8 tower in the
cache is no longer the export its verdict judged takes that export's kept verdict or judges it
again, and goes on in fp32 (a mix, said) when it fails. `--precision int8|fp32` forces a tower.
The choice, its reason and figures are recorded in index_info[TOWER_RECORD] with every precision
the index's vectors have come from (`searchlite info` shows them).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import IndexSettings, model_cache_dir
from ..errors import InvalidInputError
from ..models import int8
from ..models.hub import TOWER_RECORD
from ..storage.store import INDEXED, Store

if TYPE_CHECKING:
    from ..models.hub import ModelHub

log = logging.getLogger(__name__)


# the index keeps fp32 from then on (auto keeps an index's precision): the way out, said where info shows it
_SMALL = ("int8 not tried on a first run of {files} files (it is from {least}): this index stays fp32; "
          "a new index's first run of {least} or more judges int8, --precision int8 here would mix int8 vectors in")


class TowerChoice:
    """One index run's image tower: decided when the run starts, or judged on its first images."""

    def __init__(self, models: ModelHub, store: Store, verdict: int8.Verdict | None, *, judge: bool = False) -> None:
        """verdict: the decision (None: the torch model encodes, in its own precision); judge: the
        decision waits for judge() on the run's first images."""
        self.models = models
        self.store = store
        self.verdict = verdict
        self.judging = judge
        self._recorded = False

    @classmethod
    def start(cls, models: ModelHub, store: Store, settings: IndexSettings, files: int, *, can_judge: bool = True) -> TowerChoice:
        """The choice of a run with `files` files to read; can_judge: whether its stage can hold its
        first images for the check (not on a Ray cluster)."""
        asked = settings.precision
        recorded = store.get_info(TOWER_RECORD) or {}
        if asked == "int8" and (settings.regions or store.get_info("regions")):
            raise InvalidInputError("precision int8 does not go with regions (their vectors come from the torch model's grid "
                                    "features, in fp32)", setting="precision")
        if settings.regions or store.get_info("regions") or not models.exports_image_tower():
            return cls(models, store, None)  # the torch model (regions are its grid features)
        if asked in ("fp32", "int8"):
            reason = f"--precision {asked}" + (" (not validated)" if asked == "int8" else "")
            return cls(models, store, int8.Verdict(asked, reason))
        if recorded.get("precision") in ("fp32", "int8"):  # auto keeps the index's precision
            kept = int8.Verdict.from_record(recorded["verdict"]) if recorded.get("verdict") else int8.Verdict(recorded["precision"], "kept")
            if kept.precision == "int8" and kept.export != models.int8_export():
                return cls._changed_export(models, store, can_judge)
            return cls(models, store, kept)
        if recorded.get("precision"):  # the torch model's bf16 or fp16 (on a GPU): fp32 is the nearest here
            return cls(models, store, int8.Verdict("fp32", f"the index's vectors came from the {recorded['precision']} torch model"))
        if store.counts().get(INDEXED):
            return cls(models, store, int8.Verdict("fp32", "the index's vectors were encoded in fp32 before int8 was offered"))
        cached = models.int8_verdict()
        if cached is not None:
            return cls(models, store, cached.seen_from(_index_of(store)))
        if files < int8.MIN_IMAGES:
            return cls(models, store, int8.Verdict("fp32", _SMALL.format(files=files, least=int8.MIN_IMAGES)))
        if not can_judge:
            return cls(models, store, int8.Verdict("fp32", "int8 is judged in an index run on this machine, not on a cluster"))
        return cls(models, store, None, judge=True)

    @classmethod
    def _changed_export(cls, models: ModelHub, store: Store, can_judge: bool) -> TowerChoice:
        """An int8 index whose int8 tower in the cache is not the one its vectors came from (made
        again, replaced, damaged): the new one's verdict where the cache has it, else judged on
        this run's first images; failing, fp32 (a mix, said by record())."""
        cached = models.int8_verdict()
        cached = cached.seen_from(_index_of(store)) if cached is not None else None
        if cached is not None and cached.precision == "int8":
            log.info("the model's int8 image tower changed since this index's vectors; it passed its check")
            return cls(models, store, cached)
        if cached is not None:
            log.warning("the model's int8 image tower changed since this index's vectors and failed its check (%s): encoding in fp32",
                        cached.reason)
            return cls(models, store, replace(cached, reason=f"the int8 image tower changed and failed its check: {cached.reason}"))
        if not can_judge:
            return cls(models, store, int8.Verdict("fp32", "the int8 image tower changed since this index's vectors, and it is "
                                                   "judged in an index run on this machine, not on a cluster"))
        log.warning("the model's int8 image tower changed since this index's vectors: checking it on this run's first images")
        return cls(models, store, None, judge=True)

    def apply(self) -> None:
        """Point the model hub at the chosen tower (before the run's first image is prepared);
        while judging, the fp32 one (which prepares the images, and is the reference)."""
        if self.verdict is not None or self.judging:
            self.models.use_precision(self.verdict.precision if self.verdict is not None else "fp32", judging=self.judging)

    def judge(self, inputs: list[Any]) -> tuple[np.ndarray | None, int8.Verdict]:
        """Decide on the run's first inputs (preprocessed images; completed with sample photos
        when fewer than int8.SAMPLE): the vectors of inputs by the tower kept, or None when the
        int8 tower could not be had (then the caller encodes them in fp32)."""
        self.judging = False
        towers = self.models.int8_towers()
        if towers is None:
            verdict = self.verdict = int8.Verdict("fp32", "the int8 image tower could not be made")
            self.models.use_precision("fp32")
            return None, verdict
        fp32, quantized = towers
        sample = list(inputs[: int8.SAMPLE])
        extra = int8.sample_pictures(int8.SAMPLE - len(sample)) if len(sample) < int8.SAMPLE else []
        verdict, expected, got = int8.validate(fp32, quantized, sample + [fp32.preprocess(p) for p in extra], from_collection=len(sample))
        verdict = replace(verdict, judged_on=_index_of(self.store))
        self.verdict = verdict
        int8.keep_verdict(model_cache_dir(self.models.key()), verdict)
        # once per model (and export): the user learns which tower their index got, and why
        log.warning("image tower: %s, in %.1fs", verdict.describe(), verdict.seconds)
        self.models.use_precision(verdict.precision, quantized if verdict.precision == "int8" else fp32)
        kept = got if verdict.precision == "int8" else expected
        return kept[: len(sample)], verdict

    def record(self, precision: str) -> None:
        """Record, before the run's first vectors are committed, the tower that encodes them:
        its precision, the verdict, and every precision the index's vectors have come from (a
        second one is a mix, and said: a warning now, `info` later)."""
        if self._recorded or self.store.read_only:
            return
        self._recorded = True
        recorded = self.store.get_info(TOWER_RECORD) or {}
        before = set(recorded.get("precisions") or (["fp32"] if self.store.counts().get(INDEXED) else []))
        precisions = sorted(before | {precision})
        if len(precisions) > 1 and len(before) == 1:
            log.warning("this index now holds vectors from the %s image tower beside %s ones (searchlite info says so; "
                        "index into a new index for one precision)", precision, next(iter(before)))
        verdict = self.verdict if self.verdict is not None and self.verdict.precision == precision else None
        if verdict is not None and precision == "int8" and verdict.export is None:  # forced: the export that encodes
            verdict = replace(verdict, export=getattr(self.models.image_encoder(), "meta", {}).get("export_id"))
        record: dict[str, Any] = {"precision": precision, "precisions": precisions}
        if verdict is not None:
            record["verdict"] = verdict.to_record()
        if record != recorded:
            self.store.set_info(TOWER_RECORD, record)


def _index_of(store: Store) -> str:
    """The index folder of store, as verdicts name it."""
    return str(store.path.parent)
