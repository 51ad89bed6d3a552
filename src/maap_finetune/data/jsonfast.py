"""JSON encoding and decoding on the hot path: orjson when installed (several times faster), else json.

Both produce the same text for our rows: UTF-8, non-ASCII characters kept, no extra spaces.
"""

from __future__ import annotations

import json

try:  # orjson is a declared dependency; the fallback keeps the library importable without it.
    import orjson

    loads = orjson.loads

    def dumps(obj) -> bytes:
        return orjson.dumps(obj)

    BACKEND = "orjson"
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def loads(data):
        return json.loads(data)

    def dumps(obj) -> bytes:
        return _encoder.encode(obj).encode("utf-8")

    BACKEND = "json"
