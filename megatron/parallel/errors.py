"""Exception types raised by the parallel package."""


class LayoutError(ValueError):
    """A parallel layout (sizes, rank, shapes to shard) that cannot work.

    Raised for user-facing problems such as a world size that is not a multiple
    of ``tp * pp`` or a dimension that does not divide by the tensor-parallel size.
    It subclasses ``ValueError`` so callers that only know the builtin still catch it.
    """
