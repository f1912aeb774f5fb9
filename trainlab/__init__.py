"""trainlab: train AI models end to end with one training loop for every paradigm.

    import trainlab
    trainlab.train("digits-cnn", ["loop.epochs=5"], run_dir="runs/mine")   # or model=MyNet(), objective=...
    predictor = trainlab.load("runs/mine")
    predictor.predict(inputs)

See trainlab.api. Bad input raises trainlab.UserError (the command line prints it as one line).
"""

from trainlab.errors import UserError

__version__ = "0.1.0"
__all__ = ["train", "load", "UserError"]


def __getattr__(name: str):
    # torch is imported on first use, so `import trainlab` (and `trainlab --help`) stays fast
    if name in ("train", "load"):
        from trainlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
