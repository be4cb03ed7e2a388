"""Compose files read as the Compose Specification reads them, and turned into shoal's objects:
interpolation, `.env`, merging, the YAML 1.2 scalars, errors with file, line and key path, and
the refusal of keys shoal cannot honour. Hostile files (Hypothesis) give a ComposeError, never
anything else."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from shoal.stack.convert import NAMESPACE_LABEL, convert, refuse_unsupported
from shoal.stack.service import IMAGE_LABEL
from shoal.stack.deploy import comparable, content_digest, same_content
from shoal.stack.interpolate import substitute
from shoal.stack.problems import ComposeError
from shoal.stack.project import load_project
from shoal.stack.yamlfile import load


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def plan_of(tmp: Path, text: str, env: dict | None = None, ns: str = "st"):
    return convert(load_project([write(tmp, "compose.yml", text)], environ=env or {}), ns)


# -- interpolation ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("$A", "a"), ("${A}", "a"), ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""),
    ("${UNSET-d}", "d"), ("${A:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"),
    ("$$A", "$A"), ("${UNSET:-${A}}", "a"), ("x${A}y$A", "xaya"), ("${UNSET:-a b}", "a b"),
])
def test_interpolation_forms(text, expected):
    assert substitute(text, {"A": "a", "EMPTY": ""}, set()) == expected


def test_required_variable_names_the_key_and_line(tmp_path):
    with pytest.raises(ComposeError) as exc:
        plan_of(tmp_path, """
            services:
              web:
                image: "busybox:${TAG:?set TAG to the release}"
            """)
    assert "compose.yml:4:" in exc.value.message
    assert "services.web.image" in exc.value.message
    assert "set TAG to the release" in exc.value.message


def test_dotenv_beside_the_file_and_the_shell_wins(tmp_path):
    write(tmp_path, ".env", "TAG=1.35\nREPLICAS=3\n")
    plan = plan_of(tmp_path, """
        services:
          web:
            image: busybox:${TAG}
            deploy: {replicas: "${REPLICAS}"}
        """, env={"TAG": "1.36"})
    web = plan.services["st_web"]
    assert web.task_template.container.image == "busybox:1.36"
    assert web.mode.replicas == 3


def test_unset_variable_warns_and_is_blank(tmp_path):
    project = load_project([write(tmp_path, "c.yml", "services: {web: {image: 'b${NOPE}'}}")],
                           environ={})
    assert project.data["services"]["web"]["image"] == "b"
    assert any("NOPE" in w for w in project.warnings)


# -- YAML ------------------------------------------------------------------------------------
def test_yaml_1_2_scalars_keep_ports_and_words_as_text():
    data, _ = load("ports: [22:22, 80]\nflag: on\nmode: 0440\nyes_: yes\n", "f")
    assert data == {"ports": ["22:22", 80], "flag": "on", "mode": 0o440, "yes_": "yes"}


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    with pytest.raises(ComposeError) as exc:
        plan_of(tmp_path, "services:\n  web:\n    image: [busybox\n")
    assert "compose.yml:4:1" in exc.value.message or "compose.yml:3:" in exc.value.message
    assert "YAML syntax error" in exc.value.message


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(ComposeError) as exc:
        plan_of(tmp_path, "services:\n  web:\n    image: a\n    image: b\n")
    assert "compose.yml:4:5" in exc.value.message and "written twice" in exc.value.message


def test_anchors_merge_keys_and_extensions(tmp_path):
    plan = plan_of(tmp_path, """
        x-base: &base
          image: busybox
          environment: {A: "1"}
        services:
          web:
            <<: *base
            x-note: anything
          api:
            <<: *base
            environment: {A: "2"}
        """)
    assert plan.services["st_web"].task_template.container.env == ["A=1"]
    assert plan.services["st_api"].task_template.container.env == ["A=2"]


# -- errors that name the key ----------------------------------------------------------------
def test_wrong_type_names_the_key_path(tmp_path):
    with pytest.raises(ComposeError) as exc:
        plan_of(tmp_path, """
            services:
              web:
                image: busybox
                deploy:
                  replicas: two
            """)
    assert 'services.web.deploy.replicas: expected an integer, got "two"' in exc.value.message
    assert "compose.yml:6:" in exc.value.message


def test_unknown_keys_suggest_the_nearest(tmp_path):
    with pytest.raises(ComposeError) as exc:
        plan_of(tmp_path, """
            servces: {}
            services:
              web:
                imgae: busybox
                image: busybox
            """)
    assert "servces: unknown top-level key: did you mean 'services'?" in exc.value.message
    assert "services.web.imgae: unknown service key: did you mean 'image'?" in exc.value.message


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ComposeError) as exc:
        plan_of(tmp_path, """
            services:
              web:
                image: busybox
                ports: ["80:99999"]
                stop_grace_period: forever
                healthcheck: {retries: -1}
            """)
    assert len(exc.value.problems) == 3


# -- unsupported and no-effect keys -----------------------------------------------------------
def test_unsupported_keys_refuse_with_reason_and_line(tmp_path):
    plan = plan_of(tmp_path, """
        services:
          web:
            image: busybox
            privileged: true
            devices: ["/dev/fuse"]
            network_mode: host
          built:
            build: .
        """)
    with pytest.raises(ComposeError) as exc:
        refuse_unsupported(plan)
    text = exc.value.message
    assert "nothing was deployed" in text and "--allow-unsupported" in text
    for key, line in (("services.web.privileged", 5), ("services.web.devices", 6),
                      ("services.web.network_mode", 7), ("services.built.build", 9)):
        assert f"compose.yml:{line}:" in text and key in text
    assert "st_built" not in plan.services


def test_false_valued_unsupported_keys_are_fine(tmp_path):
    plan = plan_of(tmp_path, "services: {web: {image: busybox, privileged: false}}")
    refuse_unsupported(plan)


def test_no_effect_keys_warn(tmp_path):
    plan = plan_of(tmp_path, """
        services:
          web:
            image: busybox
            build: .
            container_name: web1
            restart: always
            deploy: {restart_policy: {condition: on-failure}}
        """)
    text = "\n".join(plan.warnings)
    assert "services.web.build" in text and "services.web.container_name" in text
    assert "services.web.restart: ignored" in text
    assert plan.services["st_web"].task_template.restart_policy.condition == "on-failure"


# -- conversion ------------------------------------------------------------------------------
def test_a_realistic_service_converts_with_docker_names_and_labels(tmp_path):
    write(tmp_path, "pass.txt", "s3cret")
    write(tmp_path, "web.env", "FROM_FILE=1\nA=file\n")
    plan = plan_of(tmp_path, """
        services:
          web:
            image: nginx:1.25
            entrypoint: ["/docker-entrypoint.sh"]
            command: nginx -g 'daemon off;'
            env_file: web.env
            environment: {A: shell}
            labels: [com.example=1]
            ports: ["8080:80", "9000-9001:90-91/udp", {target: 443, published: 8443, mode: host}]
            networks: {front: {aliases: [www]}}
            volumes: ["data:/data:ro", "./site:/site", {type: tmpfs, target: /cache, tmpfs: {size: 1m}}]
            secrets: [pass, {source: pass, target: /etc/p, mode: 0400, uid: "1"}]
            configs: [{source: conf, target: /etc/app.ini}]
            healthcheck: {test: ["CMD", "true"], interval: 1m30s, timeout: 500ms, retries: 2}
            user: "1000:1000"
            working_dir: /srv
            stop_grace_period: 1m
            cap_add: [NET_ADMIN]
            sysctls: {net.core.somaxconn: 1024}
            ulimits: {nofile: {soft: 10, hard: 20}, nproc: 5}
            dns: 10.0.0.2
            extra_hosts: ["db:10.1.1.1"]
            tmpfs: ["/run:size=64k,mode=1777"]
            logging: {driver: json-file, options: {max-size: 1m, max-file: "3"}}
            deploy:
              mode: replicated
              replicas: 3
              labels: {tier: front}
              resources: {limits: {cpus: "0.5", memory: 64M, pids: 100}, reservations: {memory: 32M}}
              restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3, window: 10s}
              update_config: {parallelism: 2, delay: 1s, order: start-first, failure_action: rollback}
              placement: {constraints: [node.role==worker], preferences: [{spread: node.labels.zone}], max_replicas_per_node: 2}
        networks: {front: {attachable: true}}
        volumes: {data: {driver_opts: {type: tmpfs, device: tmpfs}}}
        secrets: {pass: {file: ./pass.txt}}
        configs: {conf: {content: "x=1"}}
        """, ns="shop")
    web = plan.services["shop_web"]
    c = web.task_template.container
    assert web.labels == {NAMESPACE_LABEL: "shop", IMAGE_LABEL: "nginx:1.25", "tier": "front"}
    assert c.labels == {"com.example": "1", NAMESPACE_LABEL: "shop"}
    assert c.command == ["/docker-entrypoint.sh"] and c.args == ["nginx", "-g", "daemon off;"]
    assert sorted(c.env) == ["A=shell", "FROM_FILE=1"]
    ports = [(p.published_port, p.target_port, p.protocol, p.publish_mode) for p in web.endpoint_spec.ports]
    assert ports == [(8080, 80, "tcp", "ingress"), (9000, 90, "udp", "ingress"),
                     (9001, 91, "udp", "ingress"), (8443, 443, "tcp", "host")]
    assert [(n.target, n.aliases) for n in web.task_template.networks] == [("shop_front", ["web", "www"])]
    mounts = {m.target: m for m in c.mounts}
    assert mounts["/data"].source == "shop_data" and mounts["/data"].read_only
    assert mounts["/data"].volume_options.driver_opts == {"type": "tmpfs", "device": "tmpfs"}
    assert mounts["/data"].volume_options.labels[NAMESPACE_LABEL] == "shop"
    assert mounts["/site"].type == "bind" and mounts["/site"].source == str(tmp_path / "site")
    assert mounts["/cache"].tmpfs_options.size_bytes == 1 << 20
    assert mounts["/run"].tmpfs_options.size_bytes == 64 << 10 and mounts["/run"].tmpfs_options.mode == 0o1777
    assert [(s.secret_name, s.target, s.mode, s.uid) for s in c.secrets] == [
        ("shop_pass", "/run/secrets/pass", 0o444, "0"), ("shop_pass", "/etc/p", 0o400, "1")]
    assert [(r.config_name, r.target) for r in c.configs] == [("shop_conf", "/etc/app.ini")]
    assert c.healthcheck.test == ["CMD", "true"] and c.healthcheck.interval == 90
    assert c.healthcheck.timeout == 0.5 and c.healthcheck.retries == 2
    assert (c.user, c.dir, c.stop_grace_period) == ("1000:1000", "/srv", 60.0)
    assert c.cap_add == ["NET_ADMIN"] and c.sysctls == {"net.core.somaxconn": "1024"}
    assert [(u.name, u.soft, u.hard) for u in c.ulimits] == [("nofile", 10, 20), ("nproc", 5, 5)]
    assert c.dns_config.nameservers == ["10.0.0.2"] and c.hosts == ["10.1.1.1 db"]
    assert web.task_template.log_driver.options == {"max-size": "1m", "max-file": "3"}
    res = web.task_template.resources
    assert (res.limits.nano_cpus, res.limits.memory_bytes, res.pids_limit) == (5 * 10**8, 64 << 20, 100)
    assert res.reservations.memory_bytes == 32 << 20
    rp = web.task_template.restart_policy
    assert (rp.condition, rp.delay, rp.max_attempts, rp.window) == ("on-failure", 2, 3, 10)
    assert (web.update_config.parallelism, web.update_config.order) == (2, "start-first")
    p = web.task_template.placement
    assert (p.constraints, p.preferences, p.max_replicas) == (["node.role==worker"],
                                                              ["spread=node.labels.zone"], 2)
    assert plan.networks["front"].spec["attachable"] is True
    assert plan.secrets["pass"].data == b"s3cret" and plan.configs["conf"].data == b"x=1"


def test_default_network_external_objects_and_explicit_names(tmp_path):
    plan = plan_of(tmp_path, """
        services:
          web: {image: busybox}
          api: {image: busybox, networks: [shared]}
        networks:
          shared: {external: true, name: corp-net}
        secrets:
          key: {external: true}
          cert: {name: site-cert, file: /dev/null}
        """)
    assert plan.networks["default"].name == "st_default" and not plan.networks["default"].external
    assert plan.networks["shared"].external and plan.networks["shared"].name == "corp-net"
    assert plan.secrets["key"].data is None and plan.secrets["key"].name == "key"
    assert plan.secrets["cert"].name == "site-cert"


def test_modes_jobs_and_depends_on(tmp_path):
    plan = plan_of(tmp_path, """
        services:
          migrate: {image: busybox, deploy: {mode: replicated-job, replicas: 2}}
          agent: {image: busybox, deploy: {mode: global}}
          web:
            image: busybox
            depends_on:
              migrate: {condition: service_completed_successfully}
              agent: {condition: service_started}
        """)
    job = plan.services["st_migrate"].mode
    assert (job.mode, job.max_concurrent, job.total_completions) == ("replicated-job", 2, 2)
    deps = plan.services["st_web"].depends_on
    assert [(d.service, d.condition) for d in deps] == [
        ("st_migrate", "service_completed_successfully"), ("st_agent", "service_started")]


def test_dependency_cycles_and_unknown_dependencies_are_refused(tmp_path):
    with pytest.raises(ComposeError) as exc:
        plan_of(tmp_path, """
            services:
              a: {image: busybox, depends_on: [b]}
              b: {image: busybox, depends_on: [a]}
              c: {image: busybox, depends_on: [nope]}
            """)
    text = exc.value.message
    assert "dependency cycle" in text and "'nope' is not in the file" in text


def test_undeclared_volume_secret_and_network_are_named(tmp_path):
    with pytest.raises(ComposeError) as exc:
        plan_of(tmp_path, """
            services:
              web:
                image: busybox
                volumes: ["data:/data"]
                secrets: [pw]
                networks: [back]
            """)
    text = exc.value.message
    for what in ("volume 'data' is not declared", "secret 'pw' is not declared",
                 "network 'back' is not declared"):
        assert what in text


# -- merging ---------------------------------------------------------------------------------
def test_two_files_merge_as_compose_merges(tmp_path):
    base = write(tmp_path, "a.yml", """
        services:
          web:
            image: busybox:1
            command: ["sleep", "1"]
            environment: {A: "1", B: "1"}
            ports: ["8080:80", "9090:90"]
            volumes: ["/srv:/srv", "/a:/a"]
            deploy: {replicas: 1, labels: {x: "1"}}
        """)
    over = write(tmp_path, "b.yml", """
        services:
          web:
            image: busybox:2
            command: ["sleep", "2"]
            environment: [B=2, C=3]
            ports: ["8080:80", "7070:70"]
            volumes: ["/other:/a:ro"]
            deploy: {replicas: 3, labels: {y: "2"}}
            labels: !reset null
        """)
    data = load_project([base, over], environ={}).data["services"]["web"]
    assert data["image"] == "busybox:2" and data["command"] == ["sleep", "2"]
    assert data["environment"] == {"A": "1", "B": "2", "C": "3"}
    assert [p["published"] for p in data["ports"]] == [8080, 9090, 7070]
    assert {v["target"]: v["source"] for v in data["volumes"]} == {"/srv": "/srv", "/a": "/other"}
    assert data["deploy"] == {"replicas": 3, "labels": {"x": "1", "y": "2"}}


def test_override_tag_replaces_without_merging(tmp_path):
    base = write(tmp_path, "a.yml", "services: {web: {image: b, environment: {A: '1'}}}")
    over = write(tmp_path, "b.yml", "services: {web: {environment: !override {B: '2'}}}")
    assert load_project([base, over], environ={}).data["services"]["web"]["environment"] == {"B": "2"}


# -- redeploy comparison and the secret digest ------------------------------------------------
def test_a_spec_as_stored_compares_equal_to_the_file(tmp_path):
    from dataclasses import asdict
    plan = plan_of(tmp_path, """
        services: {web: {image: busybox, networks: [n], secrets: [s]}}
        networks: {n: {}}
        secrets: {s: {content: x, file: /dev/null}}
        """.replace(", file: /dev/null", "").replace("content", "file").replace("x}", "/dev/null}"))
    body = asdict(plan.services["st_web"])
    stored = asdict(plan.services["st_web"])
    stored["task_template"]["networks"][0]["target"] = "netid"
    stored["task_template"]["container"]["secrets"][0]["secret_id"] = "secretid"
    assert comparable(stored, {"netid": "st_n"}) == comparable(body, {"netid": "st_n"})
    body["task_template"]["container"]["image"] = "busybox:2"
    assert comparable(stored, {"netid": "st_n"}) != comparable(body, {"netid": "st_n"})


def test_secret_digest_recognises_only_the_same_content():
    label = content_digest(b"one")
    assert same_content(label, b"one") and not same_content(label, b"two")
    assert not same_content("garbage", b"one") and content_digest(b"one") != label  # salted


# -- hostile files ---------------------------------------------------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=20), st.sampled_from(["${", "$$", "${A:?x}", "80:80", "1m",
                                                            "/x:/y:ro", "busybox"]))
_keys = st.one_of(st.sampled_from(["image", "ports", "deploy", "replicas", "volumes", "secrets",
                                   "networks", "environment", "healthcheck", "depends_on",
                                   "resources", "limits", "mode", "test", "target", "source",
                                   "command", "ulimits", "tmpfs", "logging", "extra_hosts",
                                   "placement", "external", "file", "content", "labels", "bind",
                                   "volume", "env_file", "required", "path", "aliases",
                                   "condition", "soft", "hard", "driver_opts", "ipam", "config",
                                   "subnet", "restart_policy", "update_config", "spread",
                                   "preferences", "constraints", "size", "options", "driver",
                                   "name", "interval", "retries", "disable", "published",
                                   "protocol", "links", "sysctls", "dns", "profiles", "tmpfs",
                                   "uid", "mode", "cpus", "memory", "pids", "reservations"]),
                  st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=25)


@settings(max_examples=int(__import__("os").environ.get("COMPOSE_FUZZ", "600")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.sampled_from(["services", "networks", "volumes", "secrets",
                                            "configs", "version", "x-a", "bogus"]),
                           st.one_of(_values, st.dictionaries(st.text(max_size=6), _values,
                                                              max_size=3)), max_size=5))
def test_hostile_documents_give_a_compose_error_or_a_plan(tmp_path_factory, doc):
    tmp = tmp_path_factory.mktemp("h")
    path = tmp / "c.yml"
    try:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    try:
        project = load_project([str(path)], environ={"A": "a"})
        plan = convert(project, "h")
    except ComposeError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)
        return
    for spec in plan.services.values():
        assert spec.name.startswith("h_")


@settings(max_examples=400, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_breaks_the_loader(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("t") / "c.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if "\ud800" not in text else None
    if not path.exists():
        return
    try:
        convert(load_project([str(path)], environ={}), "t")
    except ComposeError:
        pass
