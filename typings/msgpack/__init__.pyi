# A minimal stub for msgpack, which ships no annotations: the part cacheorm uses.
# Read by basedpyright (stubPath in pyproject.toml); mypy treats msgpack as Any.
from typing import Any

from . import exceptions as exceptions

def packb(o: Any, **kwargs: Any) -> bytes: ...
def unpackb(packed: bytes, **kwargs: Any) -> Any: ...
