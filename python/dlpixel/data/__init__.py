"""Image sources and projects: QuPath projects (through dlpixel.qupath) and folder projects (files.py)."""

from .base import ImageSource, LabelShape, Project, ProjectImage, region_shape

__all__ = ["ImageSource", "LabelShape", "Project", "ProjectImage", "region_shape"]
