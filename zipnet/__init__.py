"""zipnet: LeCun et al. 1989 reproduced, with a sweep and experiment-tracking harness."""

__version__ = "0.1.0"
