"""Exception types shared by every module.

Every error a user can cause (a bad graph file, an unknown node in ``do``, a missing label column,
a corrupt checkpoint) derives from :class:`CausalDiffAEError`, so the CLI can print its message
and exit non-zero without a traceback, and Python callers can catch one type.
"""

from __future__ import annotations


class CausalDiffAEError(Exception):
    """Base class of every user-facing error in causaldiffae."""


class GraphError(CausalDiffAEError, ValueError):
    """The declared causal graph is invalid (cycle, self-loop, bad attribute, parse error...)."""


class DataError(CausalDiffAEError, ValueError):
    """A data set is malformed (missing label column, unreadable image, mixed sizes...)."""


class InterventionError(CausalDiffAEError, ValueError):
    """A ``do()`` request names an unknown node or carries an ill-formed value."""


class CheckpointError(CausalDiffAEError, ValueError):
    """A checkpoint is missing, corrupt, truncated, or belongs to another graph."""


class ConfigError(CausalDiffAEError, ValueError):
    """A configuration value or file is invalid."""


class TrainingError(CausalDiffAEError, RuntimeError):
    """Training cannot go on (for example a non-finite loss)."""


class CausalDiffAEWarning(UserWarning):
    """Something a user should know but that does not stop the work (an intervention outside the
    training range, images resized to a common size); the CLI prints each one once, on one line."""
