"""Experiments: configurations of one pipeline (:mod:`optdepth.experiments.pipeline`).

- :func:`run_demo` (:mod:`~optdepth.experiments.image_demo`): a baseline and an L_depth image
  model on Fashion-MNIST (``optdepth demo``).
- :func:`run_lm_demo` (:mod:`~optdepth.experiments.lm_demo`): the same for byte-level causal LMs
  (``optdepth demo --model lm``).
"""

from optdepth.experiments.image_demo import run_demo
from optdepth.experiments.lm_demo import run_lm_demo

__all__ = ["run_demo", "run_lm_demo"]
