"""dlpixel: deep-learning pixel classifiers for QuPath."""

__version__ = "0.1.0"
