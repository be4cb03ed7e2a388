"""Registry credentials that come with a service (--with-registry-auth): only the nodes that
run a live task of the service get them in their assignment, and a node uses them only for a
pull of that service's image from that one registry."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import errors
from manager.specs import registry_auths
from manager.state.store import Transaction
from tests.raft_harness import wait
from tests.test_orchestration import service
from worker.registry_auths import RegistryAuthCache

CREDS = {"username": "deployer", "password": "pa55-w0rd"}


def test_only_nodes_with_a_live_task_of_the_service_receive_its_credentials(loops):
    async def scenario(h):
        svc = service("web", 1)
        svc.spec.task_template.container.image = "reg.test:5000/team/app:1"
        auth = registry_auths.from_body({"registry_auth": CREDS}, "reg.test:5000/team/app:1")
        txn = Transaction().create("services", svc)
        registry_auths.stage(txn, h.m.store, svc.id, auth)
        await h.m.propose(txn)
        await wait(lambda: sum(h.on("web").values()) == 1)
        (holder,) = h.on("web")
        for node in ("n1", "n2", "n3"):
            answer = await h.m.dispatcher.assignments(node, 0, 0)
            got = answer["registry_auths"]
            if node == holder:
                assert got == [{"service_id": svc.id, "registry": "reg.test:5000", **CREDS}]
            else:
                assert got == [], node
        # scaled to 0: the task is told to stop, and its node gets the credentials no more
        svc = h.m.store.get("services", svc.id)
        svc.spec.mode.replicas = 0
        await h.m.propose(Transaction().update("services", svc))
        await wait(lambda: all(not t.desired_up for t in h.tasks("web")))
        assert (await h.m.dispatcher.assignments(holder, 0, 0))["registry_auths"] == []
    loops(scenario)


def test_credentials_for_an_image_without_a_registry_are_refused_by_field():
    with pytest.raises(errors.InvalidArgument) as refused:
        registry_auths.from_body({"registry_auth": CREDS}, "busybox:1")
    assert refused.value.field == "registry_auth" and "names no registry" in refused.value.message
    assert registry_auths.from_body({}, "busybox:1") is None


def test_a_node_uses_them_only_for_the_service_s_registry_and_forgets_them():
    cache = RegistryAuthCache()
    cache.update([{"service_id": "s1", "registry": "reg.test:5000", **CREDS}], full=True)
    assert cache.for_pull("s1", "reg.test:5000/team/app:2").username == "deployer"
    assert cache.for_pull("s1", "other.test:5000/team/app:2") is None  # never another registry
    assert cache.for_pull("s2", "reg.test:5000/team/app:2") is None    # nor another service
    assert "pa55" not in repr(cache) and "pa55" not in repr(cache.for_pull("s1", "reg.test:5000/a"))
    cache.retain({"s2"})
    assert cache.for_pull("s1", "reg.test:5000/team/app:2") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                          st.dictionaries(st.sampled_from(["service_id", "registry", "username",
                                                           "password", "x"]),
                                          st.one_of(st.none(), st.integers(), st.text(max_size=8)))),
                max_size=5), st.booleans())
def test_junk_in_an_assignment_is_skipped_never_fatal(entries, full):
    cache = RegistryAuthCache()
    cache.update(entries, full=full)
    cache.for_pull("s1", "reg.test:5000/app:1")
    cache.for_pull("s1", "not a ref")


# ---- Docker's X-Registry-Auth header ----------------------------------------------------------
def _header_request(value: str):
    from aiohttp.test_utils import make_mocked_request
    return make_mocked_request("POST", "/services/create", headers={"X-Registry-Auth": value})


def _encode(doc) -> str:
    import base64
    import json
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def test_the_docker_header_becomes_registry_auth_or_nothing():
    from shoal.dockerapi import registry_auth
    got = registry_auth.from_request(_header_request(_encode(
        {"username": "deployer", "password": "pa55-w0rd", "serveraddress": "reg.test:5000"})))
    assert got == {"registry_auth": CREDS}
    import base64
    legacy = base64.b64encode(b"deployer:pa55-w0rd").decode()
    assert registry_auth.from_request(_header_request(_encode({"auth": legacy}))) == \
        {"registry_auth": CREDS}
    assert registry_auth.from_request(_header_request(_encode({}))) == {}
    from aiohttp.test_utils import make_mocked_request
    assert registry_auth.from_request(make_mocked_request("POST", "/services/create")) == {}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.builds(_encode, st.one_of(
    st.none(), st.integers(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["username", "password", "auth", "identitytoken", "x"]),
                    st.one_of(st.none(), st.integers(), st.text(max_size=12)), max_size=4)))))
def test_any_header_gives_credentials_nothing_or_a_400_that_does_not_echo_it(value):
    from shoal.dockerapi import registry_auth
    from shoal.dockerapi.errors import DockerError
    try:
        request = _header_request(value)
    except ValueError:
        return  # not a header value aiohttp would ever receive
    try:
        got = registry_auth.from_request(request)
    except DockerError as exc:
        assert exc.status == 400 and "X-Registry-Auth" in exc.message
        if len(value.strip()) > 3:
            assert value.strip() not in exc.message
    else:
        assert got == {} or set(got["registry_auth"]) == {"username", "password"}
