"""Errors for people: each message names the file or setting at fault and what to do about it."""

from __future__ import annotations


class DlpixelError(Exception):
    """Base class of every error dlpixel reports to the user as a one-line message."""


class ConfigError(DlpixelError):
    """A setting is unknown, out of range, or does not fit the data."""


class DataError(DlpixelError):
    """A project, image or annotation file is missing, unreadable or unusable."""


class ClassifierError(DlpixelError):
    """A classifier folder is missing, invalid, or would be overwritten."""


class WeightsError(DlpixelError):
    """Pretrained weights cannot be found, downloaded or verified."""


class TrainingError(DlpixelError):
    """Training failed (for example, the loss became NaN)."""


class Cancelled(DlpixelError):
    """The run was cancelled by the user or a listener; nothing was written."""
