"""A cache key that keeps the settings it digests (torch-free, imports nothing of otcore: the cache and the
specs both use it)."""
from __future__ import annotations

import hashlib
import json
from typing import Any


class CacheKey(str):
    """A cache key: the digest of the settings it was computed from, carried along so an entry can store them.

    An entry keeps its key's settings in its checksummed record and every read re-derives the key from
    them, so a file copied or renamed under another key's name is refused (otcore.cache).
    """

    settings: list  # [CACHE_FORMAT, kind, *spec dicts] in JSON form: exactly what the digest hashes

    def __new__(cls, settings: list) -> CacheKey:
        key = super().__new__(cls, settings_digest(settings))
        key.settings = settings
        return key

    def __getnewargs__(self) -> tuple[list]:  # pickle and copy rebuild the key from its settings
        return (self.settings,)


def settings_digest(settings: Any) -> str:
    """The key of a step's settings: the first 24 hex digits of the sha256 of their canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:24]
