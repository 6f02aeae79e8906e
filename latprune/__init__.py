"""latprune: hardware-aware, latency-predictor-driven compression of causal LMs."""

import os as _os

# OpenMP busy-waiting makes torch/xgboost 20-180x slower on small shared CPUs; this must be
# set before torch is imported. Nothing here may download: force the hub offline.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from .architecture import Architecture  # noqa: E402
from .errors import LatpruneError  # noqa: E402
from .space import SearchSpace  # noqa: E402

__version__ = "0.1.0"


def load_model(path):
    """Load a model: 'default', a HF directory, a .gguf file or a latprune checkpoint
    (uniform or per-layer). Returns the torch model in eval mode."""
    from .models import load_model as _load

    return _load(path)


__all__ = ["Architecture", "LatpruneError", "SearchSpace", "load_model", "__version__"]
