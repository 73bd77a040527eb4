"""The one base class of every error that is the user's to fix (bad input, a missing file, an unusable option).

The CLI prints such an error as one line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EediffError(ValueError):
    """Bad input or an unusable run; the message is one line naming the problem and the fix."""


class ModelError(EediffError):
    """A model name, configuration or checkpoint that cannot be used; one-line message."""
