"""The runs domain's own errors (service/api/errors.py maps them to HTTP)."""


class InvalidRunConfig(ValueError):
    """The run configuration does not validate; raised `from` the pydantic ValidationError."""
