"""Exception types raised while describing or building the model."""


class ModelSpecError(ValueError):
    """A model description that cannot be built (unknown option, sizes that do not fit).

    Subclasses ``ValueError`` so callers that only know the builtin still catch it. Messages
    name the field, the value and what was expected.
    """
