"""nanolab's trainer: a compact GPT with hand-written forward and backward passes on NumPy/CuPy."""

__version__ = "0.1.0"
__all__ = ["Config", "GPT", "make_config", "__version__"]


def __getattr__(name):
    # lazy, so that `import trainer.config` (the org's program checks) doesn't load the model's
    # kernels and Numba (~60 MB) into every agent process
    if name in ("Config", "make_config"):
        from trainer import config
        return getattr(config, name)
    if name == "GPT":
        from trainer.model import GPT
        return GPT
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
