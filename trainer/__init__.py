"""nanolab's trainer: a compact GPT with hand-written forward and backward passes on NumPy/CuPy."""
from trainer.config import Config, make_config
from trainer.model import GPT

__version__ = "0.1.0"
__all__ = ["Config", "GPT", "make_config", "__version__"]
