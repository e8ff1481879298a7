"""Exception type for every data problem a user can cause (bad files, bad options)."""

from __future__ import annotations


class DataError(Exception):
    """A data file or data option is unusable.

    The message names the file or option, the value found and what was expected, so a user can
    fix the input without reading our code.
    """
