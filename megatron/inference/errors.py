"""The exception raised for unusable generation or evaluation settings and inputs."""


class InferenceError(Exception):
    """A generation or evaluation request cannot be served; the message says why and how."""
