"""Swarm's service templates: the syntax check the managers run, the expansion on the node,
and which fields of a container spec are expanded (Docker's set)."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import errors, templates
from common.model import (ContainerSpec, Mount, Platform, Task, TaskSpec, VolumeOptions)
from worker.templates import expand_container_spec, template_values

VALUES = {"Service.ID": "svc123", "Service.Name": "web", "Service.Labels": {"b": "2", "a": "1"},
          "Node.ID": "node9", "Node.Hostname": "host-a", "Node.Platform.OS": "linux",
          "Node.Platform.Architecture": "x86_64", "Task.ID": "task7",
          "Task.Name": "web.3.task7", "Task.Slot": "3"}


# ---- the syntax -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("{{.Node.Hostname}}", "host-a"),
    ("{{ .Node.ID }}", "node9"),
    ("{{\t.Task.Slot\n}}", "3"),
    ("{{.Service.Name}}-{{.Task.Slot}}.{{.Node.Platform.OS}}/{{.Node.Platform.Architecture}}",
     "web-3.linux/x86_64"),
    ("{{.Service.ID}} {{.Task.ID}} {{.Task.Name}}", "svc123 task7 web.3.task7"),
    ("{{.Service.Labels}}", "map[a:1 b:2]"),                  # as Go prints a map
    ("{{.Service.Labels.a}}", "1"),                           # Go reads a map entry as a field
    ("a  {{- .Task.Slot -}}  b", "a3b"),                      # Go's trim markers
    ("}} stray closers {{.Node.ID}} }}", "}} stray closers node9 }}"),
])
def test_expands_placeholders(text, expected):
    templates.check(text)
    assert templates.expand(text, VALUES) == expected


@pytest.mark.parametrize("text, says", [
    ("{{.Node.Hostname", "never closed"),
    ("x {{", "never closed"),
    ("{{}}", "empty action"),
    ("{{ }}", "empty action"),
    ("{{- -}}", "empty action"),
    ("{{Node.ID}}", "not a placeholder"),
    ("{{.}}", "not a placeholder"),
    ("{{.Node.ID | printf}}", "not a placeholder"),
    ('{{"text"}}', "not a placeholder"),
    ("{{.9}}", "not a placeholder"),
    ("a {{-.Task.Slot}}", "not a placeholder"),  # "-" without a blank is no trim marker
])
def test_malformed_templates_are_refused(text, says):
    with pytest.raises(errors.InvalidArgument) as exc:
        templates.check(text, field="hostname")
    assert says in exc.value.message and "malformed template" in exc.value.message
    assert exc.value.field == "hostname"
    with pytest.raises(errors.InvalidArgument):
        templates.expand(text, VALUES)


@pytest.mark.parametrize("name", ["Node.Name", "Service", "Node.Platform", "Task.Labels",
                                  "node.id", "Service.Labels.a.b"])
def test_an_unknown_placeholder_is_named_with_the_valid_ones(name):
    with pytest.raises(errors.InvalidArgument) as exc:
        templates.check(f"x-{{{{ .{name} }}}}")
    message = exc.value.message
    assert f"{{{{.{name}}}}}" in message and "unknown template placeholder" in message
    for valid in templates.PLACEHOLDERS:
        assert f"{{{{.{valid}}}}}" in message


def test_a_label_the_service_lacks_is_an_error_when_expanded():
    templates.check("{{.Service.Labels.zone}}")  # the managers cannot know: the syntax is fine
    with pytest.raises(errors.InvalidArgument, match="no label 'zone'"):
        templates.expand("{{.Service.Labels.zone}}", VALUES)
    assert templates.expand("{{.Service.Labels.zone}}", templates.sample_values()) == "label"


# ---- properties -----------------------------------------------------------------------------
_PIECES = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["{{", "}}", "{", "}", ".", "-", " ", "{{-", "-}}", "{{ ", " }}"]),
    st.sampled_from([f"{{{{.{p}}}}}" for p in templates.PLACEHOLDERS]),
    st.sampled_from(["{{ .Node.ID }}", "{{- .Task.Slot -}}", "{{.Nope}}", "{{.Service.Labels.a}}"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_any_text_expands_or_is_refused_cleanly(text):
    """Never a crash: a string, or InvalidArgument; and check() agrees with expand()."""
    try:
        templates.check(text)
        checked = True
    except errors.InvalidArgument:
        checked = False
    try:
        out = templates.expand(text, VALUES)
    except errors.InvalidArgument as exc:
        # only a label the service lacks passes check() and still fails to expand
        assert not checked or "no label" in exc.message
        return
    assert checked and isinstance(out, str) and "{{" not in out


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_text_without_braces_is_untouched(text):
    text = text.replace("{{", "{ {")
    templates.check(text)
    assert templates.expand(text, VALUES) is text
    assert templates.expand(text, {}) is text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.sampled_from(["{{", "{{.Node.ID", "{{ }}", "{{.Node.ID}}{{"]),
       st.text(max_size=20))
def test_an_unclosed_or_empty_action_anywhere_is_refused(before, bad, after):
    after = after.replace("}}", "} }")
    text = before + bad + after
    with pytest.raises(errors.InvalidArgument):
        templates.check(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(templates.PLACEHOLDERS), min_size=1, max_size=5),
       st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=10))
def test_each_placeholder_becomes_its_value(names, sep):
    text = sep.join(f"{{{{ .{n} }}}}" for n in names)
    expected = sep.join(templates.expand(f"{{{{.{n}}}}}", VALUES) for n in names)
    assert templates.expand(text, VALUES) == expected


# ---- a task's container spec ----------------------------------------------------------------
def task(slot: int = 3, **container) -> Task:
    return Task(id="task7", service_id="svc123", service_name="web", slot=slot, node_id="node9",
                spec=TaskSpec(container=ContainerSpec(image="busybox:1", **container)))


PLATFORM = Platform(os="linux", architecture="x86_64")


def test_docker_s_fields_are_expanded():
    t = task(env=["WHO={{.Node.Hostname}}", "SLOT={{.Task.Slot}}", "PLAIN=x={{", "BARE"],
             hostname="{{.Service.Name}}-{{.Task.Slot}}",
             mounts=[Mount(type="bind", source="/data/{{.Task.Slot}}", target="/srv/{{.Node.ID}}"),
                     Mount(type="volume", source="vol-{{.Task.Slot}}", target="/v",
                           volume_options=VolumeOptions(labels={"for": "{{.Task.Name}}"}))],
             command=["echo", "{{.Node.ID}}"], labels={"l": "{{.Node.ID}}"}, dir="/{{x")
    with pytest.raises(errors.InvalidArgument) as exc:  # "x={{" is no template
        expand_container_spec(t, "node9", "host-a", PLATFORM)
    assert exc.value.field == "env[2]" and exc.value.message.startswith("env[2]: malformed")
    t.spec.container.env.remove("PLAIN=x={{")
    out = expand_container_spec(t, "node9", "host-a", PLATFORM).spec.container
    assert out.env == ["WHO=host-a", "SLOT=3", "BARE"]
    assert out.hostname == "web-3"
    assert (out.mounts[0].source, out.mounts[0].target) == ("/data/3", "/srv/node9")
    assert out.mounts[1].source == "vol-3"
    assert out.mounts[1].volume_options.labels == {"for": "web.3.task7"}
    # as in Docker, the rest is not a template
    assert out.command == ["echo", "{{.Node.ID}}"] and out.labels == {"l": "{{.Node.ID}}"}
    assert out.dir == "/{{x"
    assert t.spec.container.hostname == "{{.Service.Name}}-{{.Task.Slot}}"  # not changed


def test_a_task_without_templates_is_returned_as_it_is():
    t = task(env=["A=1"], hostname="h", mounts=[Mount(type="volume", source="v", target="/v")])
    assert expand_container_spec(t, "node9", "host-a", PLATFORM) is t


def test_a_global_task_s_slot_is_its_node_id():
    values = template_values(task(slot=0), "node9", "host-a", PLATFORM)
    assert values["Task.Slot"] == "node9"
    assert values["Task.Name"] == "web.node9.task7"  # Docker's task name: service.slot.id
    assert template_values(task(slot=2), "node9", "h", PLATFORM)["Task.Name"] == "web.2.task7"


def test_service_labels_when_given():
    t = task(env=["ZONE={{.Service.Labels.zone}}", "ALL={{.Service.Labels}}"])
    out = expand_container_spec(t, "node9", "h", PLATFORM, service_labels={"zone": "eu"})
    assert out.spec.container.env == ["ZONE=eu", "ALL=map[zone:eu]"]
    with pytest.raises(errors.InvalidArgument, match="no label 'zone'"):
        expand_container_spec(t, "node9", "h", PLATFORM)


def test_a_manager_can_check_a_spec_with_sample_values():
    """What swarmkit does before it accepts a service: expand with stand-in values, then
    check what a node would get (a hostname made of placeholders is still a hostname)."""
    c = ContainerSpec(image="busybox:1", hostname="{{.Node.Hostname}}-{{.Task.Slot}}",
                      env=["A={{.Service.Labels.anything}}"])
    out = templates.expand_container_spec(c, templates.sample_values())
    assert out.hostname == "nodehostname-1" and out.env == ["A=label"]
    bad = replace(c, mounts=[Mount(type="volume", source="{{.Node.Nope}}", target="/v")])
    with pytest.raises(errors.InvalidArgument, match="Node.Nope") as exc:
        templates.expand_container_spec(bad, templates.sample_values())
    assert exc.value.field == "mounts[0].source"


def test_the_managers_check_templates_and_what_they_expand_to():
    """As SwarmKit: a template hostname or volume name passes the API's checks when what it
    expands to would; an unknown placeholder is refused naming the field."""
    from common import errors as errs
    from common.model import ContainerSpec, Mount
    from manager.specs.services import validate_container_spec
    ok = ContainerSpec(image="busybox:1", hostname="{{.Node.Hostname}}-{{.Task.Slot}}",
                       env=["NODE={{.Node.ID}}"],
                       mounts=[Mount(type="volume", source="data-{{.Task.Slot}}", target="/d")])
    validate_container_spec(ok, "task_template.container")
    bad = ContainerSpec(image="busybox:1", env=["A={{.Node.Nope}}"])
    with pytest.raises(errs.InvalidArgument) as exc:
        validate_container_spec(bad, "task_template.container")
    assert "task_template.container.env[0]" in exc.value.message and "Node.Nope" in exc.value.message
