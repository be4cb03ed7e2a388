"""The files of a client certificate, in DOCKER_CERT_PATH's layout: ca.pem, cert.pem, key.pem."""
from __future__ import annotations

import os
from pathlib import Path

from common import errors
from shoal.cli.client import CERT_FILES


def prepare_dir(out_dir: str) -> Path:
    """The directory to write to, checked before anything is issued: refused when it already
    holds one of the files (a key is never overwritten). `write` makes it."""
    target = Path(os.path.expanduser(out_dir)).absolute()
    if target.exists() and not target.is_dir():
        raise errors.InvalidArgument(f"-o {out_dir}: {target} exists and is not a directory",
                                     field="output")
    present = [name for name in CERT_FILES if (target / name).exists()]
    if present:
        raise errors.InvalidArgument(
            f"-o {out_dir}: {target} already holds {', '.join(present)}; pick an empty "
            "directory or remove them (nothing was issued)", field="output")
    return target


def write(target: Path, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
    """The three files; the directory is made 0700 when it does not exist."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir(mode=0o700)
    # The key is 0600 from the moment it exists; the certificates are public.
    for name, data, mode in (("key.pem", key_pem, 0o600), ("cert.pem", cert_pem, 0o644),
                             ("ca.pem", ca_pem, 0o644)):
        fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(target / name, mode)  # the umask may have taken bits from the certificates
