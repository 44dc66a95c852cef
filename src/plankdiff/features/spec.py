"""The coarse-to-fine search settings: one typed object for `features search` and the study's
`features:` block, with one set of defaults. Free of torch, so the CLI's `--help` stays instant."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plankdiff.diffusion.config import NUM_TIMESTEPS

DEFAULT_TIMESTEPS = (1, 5, 10, 25, 50, 100, 200, 400, 700)


class SearchSpec(BaseModel):
    """Coarse pass: every (block, t) pair on a stratified subset of train and val images; fine pass:
    the `keep_timesteps` best timesteps (and the `keep_blocks` best blocks) on every image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timesteps: tuple[int, ...] = Field(DEFAULT_TIMESTEPS, min_length=1)
    per_class_train: int = Field(20, ge=1)
    per_class_val: int = Field(10, ge=1)
    keep_timesteps: int = Field(2, ge=1)
    keep_blocks: int | None = Field(None, ge=1)  # None: every block in the fine pass
    batch_size: int = Field(128, ge=1)

    @field_validator("timesteps")
    @classmethod
    def _within_the_process(cls, timesteps: tuple[int, ...]) -> tuple[int, ...]:
        outside = [t for t in timesteps if not 0 <= t < NUM_TIMESTEPS]
        if outside:
            raise ValueError(f"{outside} outside 0..{NUM_TIMESTEPS - 1} (the DDPM's T = {NUM_TIMESTEPS})")
        return timesteps


__all__ = ["DEFAULT_TIMESTEPS", "SearchSpec"]
