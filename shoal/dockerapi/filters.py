"""Docker's `filters` query parameter: `{"name": {"web": true}}` (or the older
`{"name": ["web"]}`), checked against what each list accepts, as dockerd does."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Optional

from shoal.dockerapi.errors import bad_request


@dataclass
class Filters:
    values: dict[str, list[str]] = field(default_factory=dict)

    def get(self, key: str) -> list[str]:
        return self.values.get(key, [])

    def __contains__(self, key: str) -> bool:
        return bool(self.values.get(key))

    def prefix(self, key: str, *candidates: str) -> bool:
        """True without the filter; else one of its values starts one of `candidates`."""
        wanted = self.get(key)
        return not wanted or any(c.startswith(w) for w in wanted for c in candidates if c)

    def exact(self, key: str, candidate: str) -> bool:
        wanted = self.get(key)
        return not wanted or candidate in wanted

    def labels(self, key: str, labels: dict[str, str]) -> bool:
        """Every `k` must be a label, every `k=v` a label with that value."""
        for item in self.get(key):
            k, sep, v = item.partition("=")
            if k not in labels or (sep and labels[k] != v):
                return False
        return True


def parse(raw: Optional[str], accepted: Iterable[str]) -> Filters:
    if not raw:
        return Filters()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("invalid filter: the filters parameter is not JSON") from None
    if not isinstance(data, dict):
        raise bad_request("invalid filter: the filters parameter must be a JSON object")
    values: dict[str, list[str]] = {}
    for key, spec in data.items():
        if isinstance(spec, dict) and all(isinstance(b, bool) for b in spec.values()):
            values[key] = list(spec)
        elif isinstance(spec, list) and all(isinstance(v, str) for v in spec):
            values[key] = list(spec)
        else:
            raise bad_request(f"invalid filter '{key}': give its values as "
                              '{"value": true} or ["value"]')
    allowed = set(accepted)
    for key in values:
        if key not in allowed:
            raise bad_request(f"invalid filter '{key}'")
    return Filters(values)
