"""The one exception type the launch package raises."""


class LaunchError(ValueError):
    """A launcher setting, hostfile or scheduler variable that cannot be used.

    It subclasses ValueError so callers that already treat bad input as ValueError keep
    working; the message always names the key, file or variable, the value, and what was
    expected.
    """
