"""latprune: hardware-aware, latency-predictor-driven compression of causal LMs.

Importing it changes nothing in the host process's environment and imports no torch. On
small shared CPUs, set OMP_WAIT_POLICY=PASSIVE before torch is imported (the `latprune`
command does): OpenMP busy-waiting makes torch and xgboost 20-180x slower there.
"""

from .architecture import Architecture
from .errors import LatpruneError
from .space import SearchSpace

__version__ = "0.1.0"


def load_model(path):
    """Load a model: 'default', a HF directory, a .gguf file or a latprune checkpoint
    (uniform or per-layer). Returns the torch model in eval mode."""
    from latprune.compress.checkpoint import load_any

    return load_any(path)


__all__ = ["Architecture", "LatpruneError", "SearchSpace", "load_model", "__version__"]
