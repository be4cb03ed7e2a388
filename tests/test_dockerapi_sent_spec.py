"""The spec as the client sent it (issue 16): Docker keeps a service's spec exactly as its client
sent it; GET /services/{id} answers that (insertDefaults=false, the default), insertDefaults=true
fills in the defaults, PreviousSpec is the previously sent spec, and a rollback swaps them.
A change made through shoal's own API shows in the Docker view (the translation of shoal's
spec), never hidden behind an older sent spec."""
from __future__ import annotations

import asyncio
import copy
import json

from common import codec
from manager.controlapi import services as shoal_services
from manager.controlapi.services import MAX_SENT_SPEC
from tests.test_dockerapi_writes import CLI_CREATE, _daemon, run


def _service(daemon, name: str):
    return daemon.manager.store.by_name("services", name)


def _inspect(daemon, ref: str, defaults: bool = False) -> dict:
    path = f"/v1.41/services/{ref}" + ("?insertDefaults=true" if defaults else "")
    [(status, body)] = run(daemon, ("GET", path, None))
    assert status == 200, body
    return body


def _update(daemon, ref: str, spec: dict) -> None:
    version = _inspect(daemon, ref)["Version"]["Index"]
    [(status, body)] = run(daemon, ("POST", f"/v1.41/services/{ref}/update?version={version}",
                                    spec))
    assert status == 200, body


def test_inspect_answers_the_spec_as_sent_and_with_defaults_on_request():
    d = _daemon()
    body = {"Name": "sent", "TaskTemplate": {"ContainerSpec": {"Image": "busybox:1",
                                                               "env": ["A=1"]},
                                             "Networks": [{"Target": "backend"}]}}
    [(status, created)] = run(d, ("POST", "/v1.41/services/create", body))
    assert status == 201, created
    sent = _inspect(d, "sent")["Spec"]
    # Docker's spelling of each key, dockerd's Mode default, the network by its id; nothing else
    assert sent == {"Name": "sent",
                    "TaskTemplate": {"ContainerSpec": {"Image": "busybox:1", "Env": ["A=1"]},
                                     "Networks": [{"Target": "net1"}]},
                    "Mode": {"Replicated": {"Replicas": 1}}}
    full = _inspect(d, "sent", defaults=True)["Spec"]
    assert full["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 10_000_000_000
    assert full["UpdateConfig"]["FailureAction"] == "pause"
    # the list answers the sent spec too, as dockerd's does
    [(status, listed)] = run(d, ("GET", "/v1.41/services?filters=" +
                                 json.dumps({"name": ["sent"]}), None))
    assert [s["Spec"] for s in listed] == [sent]
    # shoal's own view of the service knows nothing of it
    view = shoal_services.service_view(d.manager, _service(d, "sent"))
    assert "sent_specs" not in view


def test_the_clis_read_modify_write_round_trips_and_previous_spec_is_the_previous_send():
    d = _daemon()
    [(status, created)] = run(d, ("POST", "/v1.41/services/create", CLI_CREATE))
    assert status == 201
    first = _inspect(d, "api")["Spec"]
    assert first["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 3_000_000_000
    # `docker service scale api=5`: the spec as read, Replicas changed, sent back
    scaled = copy.deepcopy(first)
    scaled["Mode"]["Replicated"]["Replicas"] = 5
    _update(d, "api", scaled)
    svc = _inspect(d, "api")
    assert svc["Spec"] == scaled
    assert svc["PreviousSpec"] == first
    assert _service(d, "api").spec.mode.replicas == 5
    # rollback=previous swaps them back, sent specs and all
    version = svc["Version"]["Index"]
    [(status, _)] = run(d, ("POST", f"/v1.41/services/api/update?version={version}"
                                    "&rollback=previous", {}))
    assert status == 200
    svc = _inspect(d, "api")
    assert svc["Spec"] == first and svc["PreviousSpec"] == scaled
    assert _service(d, "api").spec.mode.replicas == 3


def test_a_change_through_shoals_own_api_shows_in_the_docker_view():
    d = _daemon()
    run(d, ("POST", "/v1.41/services/create", CLI_CREATE))
    sent = _inspect(d, "api")["Spec"]
    svc = _service(d, "api")
    spec = codec.to_plain(svc.spec)
    spec["mode"]["replicas"] = 7
    asyncio.run(shoal_services.update_service(d.manager, "api", svc.meta.version,
                                              {"spec": spec}))
    after = _inspect(d, "api")
    # the scale shows (the translation of shoal's spec); the sent spec is the previous one
    assert after["Spec"]["Mode"] == {"Replicated": {"Replicas": 7}}
    assert after["Spec"]["TaskTemplate"]["ContainerSpec"]["Isolation"] == "default"
    assert after["PreviousSpec"] == sent
    # and the docker CLI's next read-modify-write starts from it
    nxt = copy.deepcopy(after["Spec"])
    nxt["TaskTemplate"]["ContainerSpec"]["Image"] = "busybox:2"
    _update(d, "api", nxt)
    assert _service(d, "api").spec.mode.replicas == 7
    assert _inspect(d, "api")["Spec"] == nxt


def test_the_sent_spec_holds_references_only_and_its_size_is_bounded():
    d = _daemon()
    [(status, secret)] = run(d, ("POST", "/v1.41/secrets/create",
                                 {"Name": "tok", "Data": "c2VjcmV0LWJ5dGVz"}))
    assert status == 201, secret
    body = {"Name": "withsecret", "TaskTemplate": {"ContainerSpec": {
        "Image": "busybox:1",
        "Secrets": [{"SecretID": secret["ID"], "SecretName": "tok",
                     "File": {"Name": "tok", "UID": "0", "GID": "0", "Mode": 292}}]}}}
    [(status, _)] = run(d, ("POST", "/v1.41/services/create", body))
    assert status == 201
    stored = _service(d, "withsecret").sent_specs
    assert len(stored) == 1
    assert "c2VjcmV0LWJ5dGVz" not in stored[0].json and "secret-bytes" not in stored[0].json
    # a spec bigger than the bound is served, but its sent form is not kept: the translation
    big = {"Name": "big", "TaskTemplate": {"ContainerSpec": {
        "Image": "busybox:1", "Env": [f"V{i}=" + "x" * 1000 for i in range(80)]}}}
    [(status, _)] = run(d, ("POST", "/v1.41/services/create", big))
    assert status == 201
    assert _service(d, "big").sent_specs == []
    assert len(json.dumps(big)) > MAX_SENT_SPEC
    assert _inspect(d, "big")["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"][0].startswith(
        "V0=")
    # never more than the spec's and the previous spec's
    for image in ("busybox:2", "busybox:3", "busybox:4"):
        spec = _inspect(d, "withsecret")["Spec"]
        spec["TaskTemplate"]["ContainerSpec"]["Image"] = image
        _update(d, "withsecret", spec)
    assert len(_service(d, "withsecret").sent_specs) == 2
