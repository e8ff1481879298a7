"""Exception type for unusable tokenizer files and options."""

from __future__ import annotations


class TokenizerError(Exception):
    """A tokenizer cannot be built or lacks what was asked of it (a file, a special token).

    The message names the tokenizer type, the file or token, and what was expected.
    """
