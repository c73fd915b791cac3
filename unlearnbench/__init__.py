"""unlearnbench: machine unlearning in class-conditional diffusion models, benchmarked."""

__version__ = "0.1.0"
