"""The shares a stratified split is drawn with, defined once for the experiment files (`splits:`)
and `plankdiff data split` (`--val-fraction`, `--test-fraction`, …). Light (pydantic only): the
command line reads its defaults to build `--help`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
# NDSB: 71 of 121 classes have >= 60 training images at 70/10/20.
BALANCED_MIN_TRAIN = 60
BALANCED_CAP = 100
# A temporal split's validation share of its training period: 0.1 of the 0.8 not held out for test.
TEMPORAL_VAL_FRACTION = 0.125


class SplitOptions(BaseModel):
    """How the stratified partitions are drawn. The defaults are the shipped studies' 70/10/20."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Shares of each class's images held out for validation (where every choice is made) and for
    # test; the rest trains. A temporal split keeps the same validation share of its training
    # period's non-test images, and carves `test_fraction` of its training rows as in-period test.
    val_fraction: float = Field(DEFAULT_FRACTIONS[1], gt=0, lt=1)
    test_fraction: float = Field(DEFAULT_FRACTIONS[2], gt=0, lt=1)
    # Balanced splits: classes with at least this many training images, each capped at `balanced_cap`.
    balanced_min_train: int = Field(BALANCED_MIN_TRAIN, ge=1)
    balanced_cap: int = Field(BALANCED_CAP, ge=1)

    @model_validator(mode="after")
    def _room_to_train(self) -> SplitOptions:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} leave no training images"
            )
        return self

    @property
    def fractions(self) -> tuple[float, float, float]:
        """(train, val, test); exactly DEFAULT_FRACTIONS by default, so shipped splits are unchanged."""
        if (self.val_fraction, self.test_fraction) == DEFAULT_FRACTIONS[1:]:
            return DEFAULT_FRACTIONS
        return (1 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)

    @property
    def temporal_val_fraction(self) -> float:
        """The validation share of a training period (0.125 by default: 0.1 of 0.8). Rounded so the
        default is exactly 0.125: a share one ulp off moves a class's val count where n/8 ends in .5."""
        return round(self.val_fraction / (1 - self.test_fraction), 10)


__all__ = ["BALANCED_CAP", "BALANCED_MIN_TRAIN", "DEFAULT_FRACTIONS", "TEMPORAL_VAL_FRACTION", "SplitOptions"]
