"""trainlab: train AI models end to end with one training loop for every paradigm."""

__version__ = "0.1.0"
