"""Baselines trained under the same data and compute budget as the DDPM: a supervised ResNet-18
and four self-supervised methods (SimCLR, BYOL, DINO, MAE), whose frozen features go through the
same feature store and linear probe as the diffusion features. See `registry` for the method API."""

from plankdiff._lazy import lazy_exports


def _register_every_method() -> None:
    # `METHODS` is filled as the method modules are imported; do it before handing it out, as the
    # eager import of this package used to
    from plankdiff.baselines.registry import load_methods

    load_methods()


_EXPORTS = dict.fromkeys(["METHODS", "Method", "get_method", "load_methods", "register"], "registry")
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, on_load=_register_every_method)
