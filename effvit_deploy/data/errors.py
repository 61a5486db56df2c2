"""Errors raised by the data module: each names the problem and how to fix it."""
from __future__ import annotations


class DataError(ValueError):
    """A data set cannot be used as configured (missing folder, empty split, class mismatch)."""


class BadImageError(DataError):
    """An image file cannot be decoded (unreadable or truncated); the message names the file."""

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(
            f"cannot read image {path}: {reason} (list all such files with `effvit-data check DIR`, "
            "or train with --on-bad-image skip)"
        )
