"""The one base class of every mistake a user can make with the engine, the CLI or the nodes.

Each module keeps its own subclass (PlanError, CheckpointError, ...) so a message says where it comes
from, while the CLI and the nodes catch ``UserInputError`` in one place: it ends a run with its message
and no traceback, whatever part of the engine found the mistake.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A setting, file or input the user gave cannot work; the message names it and says what to change."""
