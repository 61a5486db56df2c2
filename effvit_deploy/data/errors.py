"""Errors raised by the data module: each names the problem and how to fix it."""
from __future__ import annotations

from typing import Optional


class DataError(ValueError):
    """A data set cannot be used as configured (missing folder, empty split, class mismatch)."""


class BadImageError(DataError):
    """An image file cannot be decoded (unreadable or truncated); the message names the file.

    Constructible from the message alone, so a DataLoader worker re-raises it as itself."""

    def __init__(self, message: str, path: Optional[str] = None):
        super().__init__(message)
        self.path = path

    @classmethod
    def for_file(cls, path: str, reason: str) -> "BadImageError":
        return cls(
            f"cannot read image {path}: {reason} (list all such files with `effvit-data check DIR`, "
            "or train with the override data.on_bad_image=skip to skip such files)",
            path,
        )
