"""The registry credentials this node's assignments carry (`--with-registry-auth`): per
service, in memory only, never written or logged, forgotten once no live task here needs them.
They are used for one thing: a pull of that service's image from that one registry."""
from __future__ import annotations

from typing import Iterable, Optional

from common.imageref import parse_ref
from common.registryauth import Credentials


class RegistryAuthCache:
    def __init__(self) -> None:
        self._by_service: dict[str, tuple[str, Credentials]] = {}

    def __repr__(self) -> str:
        return f"RegistryAuthCache({len(self._by_service)} services)"

    def update(self, entries: Iterable[dict], *, full: bool) -> None:
        fresh = {}
        for e in entries:
            if not isinstance(e, dict):
                continue
            sid, registry = e.get("service_id"), e.get("registry")
            user, password = e.get("username"), e.get("password")
            if all(isinstance(v, str) and v for v in (sid, registry, user)) and \
                    isinstance(password, str):
                fresh[sid] = (registry, Credentials(user, password))
        if full:
            self._by_service = fresh
        else:
            self._by_service.update(fresh)

    def retain(self, service_ids: set[str]) -> None:
        self._by_service = {sid: v for sid, v in self._by_service.items() if sid in service_ids}

    def for_pull(self, service_id: str, image: str) -> Optional[Credentials]:
        """The service's credentials if `image` is on the registry they were given for."""
        entry = self._by_service.get(service_id)
        if entry is None:
            return None
        registry, creds = entry
        try:
            host = parse_ref(image).host
        except Exception:  # a bad reference fails its pull with its own error
            return None
        return creds if host == registry else None
