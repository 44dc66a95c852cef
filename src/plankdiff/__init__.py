"""plankdiff: frozen diffusion-model features as plankton classifiers.

The pipeline, one sub-package per stage:
data → diffusion → features → probe → evaluation → report.
"""

__version__ = "0.1.0"
