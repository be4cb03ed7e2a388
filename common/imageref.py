"""Image references, Docker's grammar: [HOST[:PORT]/]REPO[:TAG][@DIGEST].

Shared by the managers (a service's image is checked when the service is created, so that a
malformed reference is refused at the API rather than by every node that tries to pull it) and
the workers' image store.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from common import errors

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z", re.ASCII)
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?\Z")


@dataclass(frozen=True)
class Reference:
    host: str          # "" for a reference without a registry (local images only)
    repo: str          # "busybox", "library/busybox", "team/app"
    tag: str           # "" when only a digest is given
    digest: str = ""   # "sha256:..." when pinned

    def __str__(self) -> str:
        name = f"{self.host}/{self.repo}" if self.host else self.repo
        if self.digest:
            return f"{name}@{self.digest}"
        return f"{name}:{self.tag}"

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repo}" if self.host else self.repo


def parse_ref(ref: str) -> Reference:
    """Docker's grammar: [HOST[:PORT]/]REPO[:TAG][@DIGEST]; the first component is a host if
    it has a dot or a port or is `localhost`. A missing tag is `latest`."""
    text = ref.strip()
    if not text:
        raise errors.InvalidArgument("image reference is empty", field="image")
    name, _, digest = text.partition("@")
    if digest and not _DIGEST_RE.match(digest):
        raise errors.InvalidArgument(f"image reference {ref!r}: bad digest {digest!r} "
                                     "(expected sha256:<64 hex digits>)", field="image")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    host = ""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, name = first, rest
        if not _HOST_RE.match(host):
            raise errors.InvalidArgument(f"image reference {ref!r}: bad registry host {host!r}",
                                         field="image")
    if not _REPO_RE.match(name):
        raise errors.InvalidArgument(
            f"image reference {ref!r}: bad repository name {name!r} (lowercase letters, digits "
            "and separators . _ - /)", field="image")
    if tag and not _TAG_RE.match(tag):
        raise errors.InvalidArgument(f"image reference {ref!r}: bad tag {tag!r}", field="image")
    if not tag and not digest:
        tag = "latest"
    return Reference(host=host, repo=name, tag=tag, digest=digest)


def normalize_ref(ref: str) -> str:
    return str(parse_ref(ref))
