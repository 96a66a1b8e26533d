"""The environments domain's own errors (service/api/errors.py maps them to HTTP)."""


class ModelUnavailable(ValueError):
    """The requested model cannot be used (no such local directory, not loadable)."""
