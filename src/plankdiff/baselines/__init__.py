"""Baselines trained under the same data and compute budget as the DDPM: a supervised ResNet-18
and four self-supervised methods (SimCLR, BYOL, DINO, MAE), whose frozen features go through the
same feature store and linear probe as the diffusion features. See `registry` for the method API."""

from plankdiff.baselines.registry import METHODS, Method, get_method, load_methods, register

load_methods()

__all__ = ["METHODS", "Method", "get_method", "load_methods", "register"]
