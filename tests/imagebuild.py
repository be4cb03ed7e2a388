"""Build small test images from Debian's busybox-static, and push them to a registry.

Importable by any test (unit, component, integration): images are written as an OCI image
layout (directory or tar) or as a `docker save` tarball, byte-for-byte reproducible (fixed
mtimes, owners and gzip headers), so two images built from the same inputs share their layers
and the same config digest.

Layers are lists of entries, lowest first:
- the base layer: /bin/busybox, a symlink per applet, /etc/passwd and /etc/group (root and
  nobody), the usual empty directories;
- `extra_files` (if any) go to a second layer, so images that differ only in their extra files
  still share the base layer;
- `extra_layers` come on top; in those a value of `None` deletes the path (a whiteout) and
  `OPAQUE` replaces a directory of the lower layers by the one in this layer (an opaque dir).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

BUSYBOX = Path("/bin/busybox")
OPAQUE = object()  # marker: the directory is opaque in this layer

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

LayerFiles = Mapping[str, Union[bytes, None, object]]


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


def busybox_available() -> bool:
    return BUSYBOX.is_file()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- layers -------------------------------------------------------------------------------
def _info(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _tar(entries: list[tuple[tarfile.TarInfo, Optional[bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _parents(path: str, seen: set[str]) -> list[tuple[tarfile.TarInfo, None]]:
    out = []
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d and d not in seen:
            seen.add(d)
            out.append((_info(d, tarfile.DIRTYPE, 0o755), None))
    return out


def layer_tar(files: LayerFiles) -> bytes:
    """An uncompressed layer tar: bytes → file (0755 if under a bin dir, else 0644),
    None → whiteout `.wh.NAME`, OPAQUE → the directory with its opaque marker."""
    entries: list[tuple[tarfile.TarInfo, Optional[bytes]]] = []
    seen: set[str] = set()
    for raw, data in sorted(files.items(), key=lambda kv: kv[0]):
        path = raw.strip("/")
        entries += _parents(path, seen)
        head, _, name = path.rpartition("/")
        prefix = head + "/" if head else ""
        if data is None:
            entries.append((_info(f"{prefix}.wh.{name}", tarfile.REGTYPE, 0o644), b""))
        elif data is OPAQUE:
            if path not in seen:
                seen.add(path)
                entries.append((_info(path, tarfile.DIRTYPE, 0o755), None))
            entries.append((_info(f"{path}/.wh..wh..opq", tarfile.REGTYPE, 0o644), b""))
        else:
            assert isinstance(data, bytes), f"{raw}: bytes, None or OPAQUE"
            mode = 0o755 if "/bin/" in "/" + path or path.startswith("bin/") else 0o644
            entries.append((_info(path, tarfile.REGTYPE, mode, len(data)), data))
    return _tar(entries)


_BASE_CACHE: dict[str, bytes] = {}


def base_layer_tar() -> bytes:
    """The busybox layer (uncompressed), built once per process."""
    if "base" in _BASE_CACHE:
        return _BASE_CACHE["base"]
    busybox = BUSYBOX.read_bytes()
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    entries: list[tuple[tarfile.TarInfo, Optional[bytes]]] = []
    for d, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755),
                    ("proc", 0o755), ("root", 0o700), ("run", 0o755), ("sys", 0o755),
                    ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755),
                    ("var/tmp", 0o1777)):
        entries.append((_info(d, tarfile.DIRTYPE, mode), None))
    entries.append((_info("bin/busybox", tarfile.REGTYPE, 0o755, len(busybox)), busybox))
    for applet in sorted(set(applets) - {"busybox"}):
        if "/" in applet:
            continue
        entries.append((_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"), None))
    entries.append((_info("usr/bin/env", tarfile.SYMTYPE, 0o777, linkname="/bin/busybox"), None))
    entries.append((_info("etc/passwd", tarfile.REGTYPE, 0o644, len(PASSWD)), PASSWD))
    entries.append((_info("etc/group", tarfile.REGTYPE, 0o644, len(GROUP)), GROUP))
    _BASE_CACHE["base"] = _tar(entries)
    return _BASE_CACHE["base"]


def gzip_bytes(data: bytes) -> bytes:
    # mtime=0 and no file name: the same layer always compresses to the same blob
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


def _layers(extra_files: LayerFiles, extra_layers: Sequence[LayerFiles]) -> list[bytes]:
    layers = [base_layer_tar()]
    if extra_files:
        layers.append(layer_tar(extra_files))
    layers += [layer_tar(files) for files in extra_layers]
    return layers


def image_config(diff_ids: list[str], config_overrides: Mapping, arch: Optional[str] = None) -> dict:
    runtime = {"Env": [DEFAULT_PATH], "Cmd": ["sh"]}
    runtime.update(config_overrides)
    return {
        "architecture": arch or host_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/imagebuild.py"}
                    for _ in diff_ids],
    }


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# ---- OCI image layout -----------------------------------------------------------------------
def _write_blob(layout: Path, data: bytes) -> str:
    digest = digest_of(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


def build_busybox_oci_layout(dest_dir: Path, tag: str = "1",
                             extra_files: Optional[LayerFiles] = None,
                             config_overrides: Optional[Mapping] = None, *,
                             extra_layers: Sequence[LayerFiles] = (),
                             arch: Optional[str] = None) -> Path:
    """Write (or add `tag` to) an OCI image layout at dest_dir; returns dest_dir.

    The manifest is listed in index.json with `org.opencontainers.image.ref.name` = tag.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    layers = _layers(extra_files or {}, extra_layers)
    layer_descs = []
    diff_ids = []
    for raw in layers:
        blob = gzip_bytes(raw)
        layer_descs.append({"mediaType": MT_OCI_LAYER_GZIP, "digest": _write_blob(dest_dir, blob),
                            "size": len(blob)})
        diff_ids.append(digest_of(raw))
    config = _canonical(image_config(diff_ids, config_overrides or {}, arch))
    manifest = _canonical({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": _write_blob(dest_dir, config),
                   "size": len(config)},
        "layers": layer_descs})
    mdigest = _write_blob(dest_dir, manifest)
    (dest_dir / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index_path = dest_dir / "index.json"
    index = (json.loads(index_path.read_text()) if index_path.exists()
             else {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []})
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    index["manifests"].append({"mediaType": MT_OCI_MANIFEST, "digest": mdigest,
                               "size": len(manifest),
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_bytes(_canonical(index))
    return dest_dir


def busybox_store(base: Path, more_images: Mapping[str, Mapping] = {}, **layout_kwargs) -> Path:
    """A worker's image store at base/store holding busybox:1 (its layout built with
    `layout_kwargs`) and each of `more_images` (a ref with its config overrides), imported
    as a worker imports an archive; returns the store's root."""
    import asyncio

    from worker.images import ImageStore
    layout = build_busybox_oci_layout(base / "oci", "1", **layout_kwargs)
    for ref, overrides in more_images.items():
        build_busybox_oci_layout(layout, ref, config_overrides=overrides)

    async def load() -> None:
        store = ImageStore(base / "store")
        for ref in ("busybox:1", *more_images):
            await store.import_archive(layout, ref)
    asyncio.run(load())
    return base / "store"


def layout_image(layout: Path, tag: str = "1") -> dict:
    """What a built layout holds for `tag`: manifest/config digests, layer digests, diff ids."""
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.loads(_blob(layout, desc["digest"]))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    return {"manifest_digest": desc["digest"], "manifest": manifest,
            "config_digest": manifest["config"]["digest"], "config": config,
            "layer_digests": [layer["digest"] for layer in manifest["layers"]],
            "diff_ids": config["rootfs"]["diff_ids"]}


def _blob(layout: Path, digest: str) -> bytes:
    return (Path(layout) / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def tar_directory(src_dir: Path, dest_tar: Path) -> Path:
    """A plain tar of a directory's contents (e.g. an OCI layout as `oci-archive`)."""
    with tarfile.open(dest_tar, "w") as tar:
        for name in sorted(os.listdir(src_dir)):
            tar.add(Path(src_dir) / name, arcname=name)
    return Path(dest_tar)


def build_busybox_oci_tar(dest_tar: Path, tag: str = "1", **kwargs) -> Path:
    tmp = Path(str(dest_tar) + ".d")
    try:
        build_busybox_oci_layout(tmp, tag, **kwargs)
        return tar_directory(tmp, dest_tar)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- docker save ----------------------------------------------------------------------------
def build_docker_save_tar(dest_tar: Path, ref: str = "busybox:1",
                          extra_files: Optional[LayerFiles] = None,
                          config_overrides: Optional[Mapping] = None, *,
                          extra_layers: Sequence[LayerFiles] = ()) -> Path:
    """A `docker save` tarball (legacy layout: manifest.json, <id>.json, <dir>/layer.tar)."""
    layers = _layers(extra_files or {}, extra_layers)
    diff_ids = [digest_of(raw) for raw in layers]
    config = _canonical(image_config(diff_ids, config_overrides or {}))
    config_hex = digest_of(config).split(":", 1)[1]
    members: list[tuple[tarfile.TarInfo, Optional[bytes]]] = []
    layer_paths = []
    for raw, diff_id in zip(layers, diff_ids):
        d = diff_id.split(":", 1)[1]  # docker names the dir after a v1 id; any unique name works
        members.append((_info(d, tarfile.DIRTYPE, 0o755), None))
        members.append((_info(f"{d}/VERSION", tarfile.REGTYPE, 0o644, 3), b"1.0"))
        members.append((_info(f"{d}/layer.tar", tarfile.REGTYPE, 0o644, len(raw)), raw))
        layer_paths.append(f"{d}/layer.tar")
    members.append((_info(f"{config_hex}.json", tarfile.REGTYPE, 0o644, len(config)), config))
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [ref] if ref else None,
                            "Layers": layer_paths}]).encode()
    members.append((_info("manifest.json", tarfile.REGTYPE, 0o644, len(manifest)), manifest))
    if ref:
        repo, _, tag = ref.rpartition(":")
        repos = json.dumps({repo: {tag: layer_paths[-1].split("/")[0]}}).encode()
        members.append((_info("repositories", tarfile.REGTYPE, 0o644, len(repos)), repos))
    Path(dest_tar).write_bytes(_tar(members))
    return Path(dest_tar)


# ---- registry push (distribution API v2, monolithic uploads) ------------------------------
def docker_media_types(manifest: dict) -> dict:
    """The same manifest with Docker v2 schema 2 media types (blobs are unchanged)."""
    out = dict(manifest)
    out["mediaType"] = MT_DOCKER_MANIFEST
    out["config"] = dict(manifest["config"], mediaType=MT_DOCKER_CONFIG)
    out["layers"] = [dict(layer, mediaType=MT_DOCKER_LAYER_GZIP) for layer in manifest["layers"]]
    return out


async def push_blob(session, base_url: str, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    async with session.head(f"{base_url}/v2/{repo}/blobs/{digest}") as r:
        if r.status == 200:
            return digest
    async with session.post(f"{base_url}/v2/{repo}/blobs/uploads/") as r:
        assert r.status == 202, f"upload start: HTTP {r.status} {await r.text()}"
        location = r.headers["Location"]
    if location.startswith("/"):
        location = base_url + location
    sep = "&" if "?" in location else "?"
    async with session.put(f"{location}{sep}digest={digest}", data=data,
                           headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 201, f"upload {digest}: HTTP {r.status} {await r.text()}"
    return digest


async def push_manifest(session, base_url: str, repo: str, reference: str, body: bytes,
                        media_type: str) -> str:
    async with session.put(f"{base_url}/v2/{repo}/manifests/{reference}", data=body,
                           headers={"Content-Type": media_type}) as r:
        assert r.status == 201, f"manifest {reference}: HTTP {r.status} {await r.text()}"
    return digest_of(body)


async def push_layout(base_url: str, layout: Path, repo: str, tag: str, *, layout_tag: str = "1",
                      docker_types: bool = False, push_tag: bool = True) -> str:
    """Push one image of an OCI layout to a registry (e.g. "http://127.0.0.1:5000");
    returns the pushed manifest's digest. docker_types: push a Docker v2 schema 2 manifest."""
    import aiohttp
    info = layout_image(layout, layout_tag)
    manifest = docker_media_types(info["manifest"]) if docker_types else info["manifest"]
    body = _canonical(manifest)
    async with aiohttp.ClientSession() as session:
        for digest in [info["config_digest"], *info["layer_digests"]]:
            await push_blob(session, base_url, repo, _blob(layout, digest))
        media_type = manifest["mediaType"]
        if push_tag:
            return await push_manifest(session, base_url, repo, tag, body, media_type)
        return await push_manifest(session, base_url, repo, digest_of(body), body, media_type)


async def push_index(base_url: str, repo: str, tag: str, entries: list[tuple[str, str, int]],
                     *, docker_types: bool = False) -> str:
    """Push a manifest list / image index for manifests already in the registry.
    entries: (architecture, manifest digest, manifest size)."""
    import aiohttp
    mt_list = MT_DOCKER_LIST if docker_types else MT_OCI_INDEX
    mt_manifest = MT_DOCKER_MANIFEST if docker_types else MT_OCI_MANIFEST
    body = _canonical({"schemaVersion": 2, "mediaType": mt_list, "manifests": [
        {"mediaType": mt_manifest, "digest": d, "size": size,
         "platform": {"architecture": arch, "os": "linux"}} for arch, d, size in entries]})
    async with aiohttp.ClientSession() as session:
        return await push_manifest(session, base_url, repo, tag, body, mt_list)


def manifest_size(layout: Path, tag: str = "1", docker_types: bool = False) -> int:
    info = layout_image(layout, tag)
    manifest = docker_media_types(info["manifest"]) if docker_types else info["manifest"]
    return len(_canonical(manifest))


# ---- a local registry (Debian's docker-registry, distribution 2.8) --------------------------
REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port(host: str = "127.0.0.1") -> int:
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _x509_name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd entry with a bcrypt hash, as docker-registry's htpasswd auth wants."""
    import warnings
    with warnings.catch_warnings():
        # crypt (libxcrypt's bcrypt) rather than a new dependency for one test hash
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"


def registry_tls_files(dest: Path, ip: str) -> tuple[Path, Path, Path]:
    """A test CA, and a server certificate it signed for `ip`: (ca.crt, server.crt,
    server.key) under dest."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_x509_name("shoal test registry CA"))
          .issuer_name(_x509_name("shoal test registry CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_x509_name(ip)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    dest.mkdir(parents=True, exist_ok=True)
    paths = dest / "ca.crt", dest / "server.crt", dest / "server.key"
    paths[0].write_bytes(_pem_cert(ca))
    paths[1].write_bytes(_pem_cert(cert))
    paths[2].write_bytes(_pem_key(key))
    os.chmod(paths[2], 0o600)
    return paths


class LocalRegistry:
    """`docker-registry serve` on 127.0.0.1:<free port>, storage in `workdir` (its default
    config listens on every interface: never use that). Use as a context manager or call
    start()/stop(); `host` is "127.0.0.1:PORT", `url` its base URL.

    With `tls` (certificate and key PEM files) it speaks HTTPS only; with `htpasswd` (a file of
    bcrypt entries) every request needs basic auth. Stopped and started again on the same
    workdir, it keeps its images: push to it open, then restart it locked."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", *,
                 tls: Optional[tuple[Path, Path]] = None, htpasswd: Optional[Path] = None,
                 port: Optional[int] = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port(host)
        self.host = f"{host}:{self.port}"
        self.tls = tls
        self.htpasswd = htpasswd
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.proc: Optional[subprocess.Popen] = None

    @staticmethod
    def available() -> bool:
        return os.access(REGISTRY_BIN, os.X_OK)

    def start(self, timeout: float = 10.0) -> "LocalRegistry":
        import ssl
        import time
        import urllib.error
        import urllib.request
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        tls = (f", tls: {{certificate: {self.tls[0]}, key: {self.tls[1]}}}" if self.tls else "")
        auth = (f"auth: {{htpasswd: {{realm: shoal-test, path: {self.htpasswd}}}}}\n"
                if self.htpasswd else "")
        config.write_text(
            "version: 0.1\n"
            "log: {level: error, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.workdir / 'data'}}}, "
            "delete: {enabled: true}}\n"
            f"http: {{addr: {self.host}{tls}}}\n" + auth)
        # the probe only asks whether it answers: no CA, no credentials
        probe_ctx = ssl._create_unverified_context() if self.tls else None
        log = open(self.workdir / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=probe_ctx) as r:
                    if r.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and self.htpasswd:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("docker-registry did not start: "
                                   + (self.workdir / "registry.log").read_text()[-2000:])
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
