"""mvd_jax: Mobile Video Diffusion (MobileVD, arXiv 2412.07583) in JAX/Flax NNX."""
import os
import warnings

__version__ = "0.1.0"

# With the [export] extra, qai-hub holds protobuf at 6.31.1, one major version above the 5.x gencode of
# grain's protos; protobuf then warns on every import of grain (harmless: the runtime reads older gencode).
# Silenced by its exact text so that CLI output stays clean; any other protobuf warning still shows.
warnings.filterwarnings("ignore", message=r"Protobuf gencode version 5\.\d+\.\d+ is exactly one major version older",
                        category=UserWarning)
# The trainer's Grain data workers are started with multiprocessing's "spawn": fresh interpreters that import
# grain (and warn) before any mvd_jax code runs in them. The same filter reaches them in Python's -W syntax
# through PYTHONWARNINGS, which child processes inherit: a literal message prefix, the category and the module
# that warns (protobuf's version check warns only for gencode exactly one major version older, i.e. 5.x here).
_GENCODE_FILTER = "ignore:Protobuf gencode version 5.:UserWarning:google.protobuf.runtime_version"
if _GENCODE_FILTER not in os.environ.get("PYTHONWARNINGS", "").split(","):
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _GENCODE_FILTER]))
# google.api_core (under gcsfs and tensorboardX's gs:// writer) warns on import that its future releases
# will drop Python 3.11; nothing to act on in a run's output.
warnings.filterwarnings("ignore", message=r"You are using a Python version \(3\.11", category=FutureWarning)
