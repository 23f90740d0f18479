"""User-facing errors.

Every problem a user can cause (a misspelled name, a missing dataset, a checkpoint for another
network, ...) is raised as a :class:`KdzooError`. The CLI prints its message as one line and exits
with status 2; library users catch it like any other exception. Anything else is a bug in kdzoo.
"""
from __future__ import annotations


class KdzooError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it.

    ``exit_status`` is what the CLI exits with: 2 for bad input, 1 for a run that failed on
    its way (a NaN loss, a full disk)."""

    exit_status = 2


class ConfigError(KdzooError):
    """An invalid configuration value, key or combination."""


class CheckpointError(KdzooError):
    """A checkpoint file that cannot be read or does not fit the model."""


class DatasetError(KdzooError):
    """A dataset that is missing, incomplete or corrupt."""
