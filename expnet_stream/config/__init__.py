"""Validated settings (YAML + EXPNET_ environment overrides)."""

from .settings import WorkerSettings as WorkerSettings
from .settings import load_settings as load_settings
