"""--resolve-image: a service's image pinned to the digest its tag has now (`NAME:TAG@sha256:...`),
as the docker CLI pins through DistributionInspect, so that every node runs the same image and a
re-pushed tag rolls out on the next update.

The lookup goes through the local node (POST /images/resolve), which knows the registries it may
reach over plain HTTP and the CAs of certs.d. Where a tag cannot be pinned the service still goes
ahead, unpinned, with a warning that says so and why (docker's behaviour); only a refused login
that the user meant to pass along (--with-registry-auth) stops it.
"""
from __future__ import annotations

from typing import Callable, Optional

import click

from common import errors
from common.imageref import Reference, parse_ref
from common.registryauth import DockerConfig

ALWAYS, CHANGED, NEVER = "always", "changed", "never"
MODES = (ALWAYS, CHANGED, NEVER)

RESOLVE_IMAGE_HELP = ("Pin the image to its registry digest: always, changed (only when the "
                      "image changes), never")


def resolve_image_option(fn):
    return click.option("--resolve-image", type=click.Choice(MODES), default=ALWAYS,
                        show_default=True, help=RESOLVE_IMAGE_HELP)(fn)


def _warn(text: str) -> None:
    click.echo(f"warning: {text}", err=True)


def _parse(image: str) -> Reference:
    try:
        return parse_ref(image)
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument(f"image: {exc.message}", field="image") from None


def tag_of(image: str) -> Optional[tuple[str, str]]:
    """(name, tag) an image reference names, its digest left out; None for NAME@DIGEST alone
    (nothing to resolve) or a malformed reference."""
    try:
        ref = parse_ref(image)
    except errors.InvalidArgument:
        return None
    return (ref.name, ref.tag) if ref.tag else None


def same_tag(a: str, b: Optional[str]) -> bool:
    """Whether two references name the same tag of the same repository, digests aside."""
    return b is not None and tag_of(a) is not None and tag_of(a) == tag_of(b)


def should_resolve(mode: str, image_changed: bool) -> bool:
    if mode not in MODES:
        raise errors.InvalidArgument(f"--resolve-image: {mode!r} is none of {', '.join(MODES)}",
                                     field="resolve_image")
    return mode == ALWAYS or (mode == CHANGED and image_changed)


Lookup = Callable[[dict], dict]


def cli_lookup(cli) -> Lookup:
    """The local node's POST /images/resolve, through the CLI's connection."""
    return lambda body: cli.call("POST", "/images/resolve", body, timeout=90)


def pin(lookup: Lookup, image: str, *, current: Optional[str] = None,
        with_registry_auth: bool = False,
        warn: Callable[[str], None] = _warn,
        config: Optional[DockerConfig] = None) -> str:
    """`image` pinned to its tag's digest now (a pinned image is looked up again by its tag).

    When the tag cannot be pinned: `current` (the service's image so far) if it pins the same
    tag, so a registry that is down for a moment rolls nothing back to a floating tag; else
    `image` as given. Either way with a warning saying the tag was not pinned, and why."""
    ref = _parse(image)
    if not ref.tag:
        return image  # NAME@DIGEST: the user pinned it
    if not ref.host:
        # shoal has no default registry: the node would answer just this, so do not ask it
        answer = {"resolved": False, "reason": "no_registry",
                  "message": f"image {ref.name}:{ref.tag} names no registry, so it can only be "
                             "a local image of the nodes (shoal has no default registry)"}
    else:
        body: dict = {"ref": f"{ref.name}:{ref.tag}"}
        creds = (config or DockerConfig()).credentials(ref.host)
        if creds is not None:
            # the caller's own `shoal login`, to the local node for this lookup only
            body["auth"] = creds.plain()
        answer = lookup(body)
    if answer.get("resolved"):
        return _checked_pin(answer.get("image"), ref)
    reason, message = answer.get("reason", ""), answer.get("message", "no reason given")
    if reason == "auth" and with_registry_auth:
        raise errors.PermissionDenied(
            f"image {image}: cannot pin its tag to a digest: {message}", field="image")
    kept = current if current is not None and same_tag(image, current) and \
        _parse(current).digest else None
    if kept is not None:
        warn(f"image {ref.name}:{ref.tag} was NOT pinned to a digest again ({message}); the "
             f"service keeps the digest it had: {kept}")
        return kept
    warn(f"image {ref.name}:{ref.tag} was NOT pinned to a digest ({message}); each node uses "
         f"the image it finds under that tag, so nodes may run different versions of it")
    return image


def _checked_pin(value: object, ref: Reference) -> str:
    """The node's answer, used only if it pins the very name and tag that were asked for."""
    try:
        got = parse_ref(value) if isinstance(value, str) else None
    except errors.InvalidArgument:
        got = None
    if got is None or not got.digest or (got.name, got.tag) != (ref.name, ref.tag):
        raise errors.Unavailable(f"image {ref.name}:{ref.tag}: the node answered the digest "
                                 f"lookup with {value!r}, which pins something else",
                                 field="image")
    return str(value)


def pin_spec_image(lookup: Lookup, spec: dict, *, mode: str, image_changed: bool,
                   current: Optional[str] = None, with_registry_auth: bool = False,
                   warn: Callable[[str], None] = _warn) -> None:
    """The spec's container image pinned in place, as --resolve-image says."""
    container = spec["task_template"]["container"]
    if should_resolve(mode, image_changed):
        container["image"] = pin(lookup, container["image"], current=current,
                                 with_registry_auth=with_registry_auth, warn=warn)


def stack_image(lookup: Lookup, image: str, current: Optional[str], *, mode: str,
                with_registry_auth: bool = False,
                warn: Callable[[str], None] = _warn) -> str:
    """The image a stack deploy sends for a service whose file says `image` and whose
    running spec has `current` (None: a new service). `changed` keeps the current pin while
    the file names the same tag, so an unchanged stack compares equal and touches nothing."""
    if mode == CHANGED and same_tag(image, current) and current is not None \
            and parse_ref(current).digest and not parse_ref(image).digest:
        return current
    if not should_resolve(mode, image_changed=not same_tag(image, current)):
        return image
    return pin(lookup, image, current=current, with_registry_auth=with_registry_auth, warn=warn)
