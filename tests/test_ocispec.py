"""The OCI spec the executor assembles, checked without root or runc."""
from __future__ import annotations

import pytest

from common import errors
from worker.executor import ContainerConfig
from worker.executor.ocispec import runtime_spec
from worker.images import Image


def _config(**changes) -> ContainerConfig:
    cfg = ContainerConfig(id="t" * 25, name="web.1.x", image="busybox:1", command=["sh"],
                          args=[], env=[], workdir="", user="", hostname="", labels={},
                          mounts=[], memory_limit=0, nano_cpus=0, pids_limit=0,
                          stop_signal="SIGTERM", stop_grace=10.0, netns_path=None,
                          extra_binds=[])
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def test_a_secret_onto_a_directory_of_the_image_is_refused_by_name(tmp_path):
    """Issue 13, defect 8: a secret or config target that is a directory in the image failed
    in runc; the node says which target and why (the API cannot know the image's paths)."""
    rootfs = tmp_path / "bundle" / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "srv" / "conf").mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    image = Image(ref="busybox:1", id="sha256:" + "0" * 64, config={}, layers=[], size=0, created="")
    with pytest.raises(errors.InvalidArgument) as exc:
        runtime_spec(_config(extra_binds=[(str(secret), "/srv/conf", True)]), image,
                     tmp_path / "bundle", "/shoal/t", tmp_path / "volumes")
    assert "'/srv/conf' is a directory in image busybox:1" in exc.value.message
    spec = runtime_spec(_config(extra_binds=[(str(secret), "/srv/conf/app.ini", True)]), image,
                        tmp_path / "bundle", "/shoal/t", tmp_path / "volumes")
    assert any(m["destination"] == "/srv/conf/app.ini" for m in spec["mounts"])
