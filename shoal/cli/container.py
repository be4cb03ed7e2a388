"""`shoal container ...` and `shoal image ...`: this node's containers and images."""
from __future__ import annotations

import os
import sys

import click

from common.imageref import parse_ref
from common.model import RESTART_POLICIES
from common.registryauth import DockerConfig
from common.units import format_size
from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.container_cmds import register as register_container_cmds
from shoal.cli.log_flags import SINCE_HELP, UNTIL_HELP, log_window, rfc3339_nano
from shoal.cli.output import print_json, print_listing
from shoal.cli.flag_values import parse_mount, parse_publish
from shoal.cli.image_build import image_build
from shoal.cli.service import CPUS, SIZE


@click.group()
def container() -> None:
    """Manage the containers running on this node."""


@container.command("ls")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show stopped containers too")
@click.option("-q", "--quiet", is_flag=True, help="Only display container IDs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_cli
def container_ls(cli: Cli, show_all, quiet, fmt) -> None:
    """List containers on this node, like `docker ps`."""
    items = cli.call("GET", "/containers", params={"all": "true" if show_all else "false"})
    print_listing(items, quiet=quiet, fmt=fmt, headers=["CONTAINER ID", "IMAGE", "STATE", "PID", "NAME"],
                  rows=lambda items: [[c["id"][:12], c["image"], c["state"], c["pid"] or "", c["name"]]
                                      for c in items])


@container.command("inspect")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_cli
def container_inspect(cli: Cli, refs) -> None:
    """Display detailed information on containers of this node: configuration, state, exit,
    task and network addresses."""
    print_json([cli.call("GET", api_path("containers", ref)) for ref in refs])


@container.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--name", default="", help="Container name (default: the start of its id)")
@click.option("--network", "networks", multiple=True,
              help="Attach to this attachable overlay network (repeatable)")
@click.option("-e", "--env", multiple=True, help="Environment variable KEY=VALUE (repeatable)")
@click.option("--mount", "mounts", multiple=True,
              help="type=bind|volume|tmpfs,source=...,target=...[,readonly] (repeatable)")
@click.option("-p", "--publish", "publish", multiple=True,
              help="Bind a port of this node to the container: PUBLISHED:TARGET[/udp] (repeatable)")
@click.option("-w", "--workdir", default="", help="Working directory inside the container")
@click.option("-u", "--user", default="", help="Username or UID[:GID]")
@click.option("--hostname", default="", help="Container hostname")
@click.option("--entrypoint", default="", help="Overwrite the image's entrypoint (space separated)")
@click.option("-m", "--memory", type=SIZE, help="Memory limit (e.g. 64m); past it the kernel's "
              "OOM killer ends the container")
@click.option("--cpus", type=CPUS, help="CPU limit (e.g. 0.5: half of one CPU)")
@click.option("--pids-limit", type=click.IntRange(min=1), help="Limit on the number of processes")
@click.option("-d", "--detach", is_flag=True,
              help="Run it in the background and print its id (default: show its output and "
                   "exit with its exit code)")
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container once it has exited")
@click.option("--restart", "restart", default="no", show_default=True,
              help="Run it again when it exits: no, on-failure[:MAX_RETRIES], always or "
                   "unless-stopped (its node restarts it, as Docker's daemon)")
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_cli
def container_run(cli: Cli, name, networks, env, mounts, publish, workdir, user, hostname,
                  entrypoint, memory, cpus, pids_limit, detach, auto_remove, restart, image,
                  args) -> None:
    """Run a standalone container on this node, as `docker run`: in the foreground, its output
    shown and its exit code yours; with -d in the background.

    It may join attachable overlay networks (`network create --attachable`), where it reaches
    services by name and their tasks reach it by its name. With --restart its node runs it
    again when it exits; `container rm` removes it, or --rm once it has exited.
    """
    for entry in env:
        if "=" not in entry or entry.startswith("="):
            raise click.BadParameter(f"{entry!r}: expected KEY=VALUE", param_hint="--env")
    container = {"image": image, "args": list(args), "env": list(env),
                 "mounts": [parse_mount(m) for m in mounts], "dir": workdir, "user": user,
                 "hostname": hostname}
    if entrypoint:
        container["command"] = entrypoint.split()
    ports = []
    for text in publish:
        port = parse_publish(text)
        if not port["published_port"] or port["publish_mode"] not in ("ingress", "host"):
            raise click.BadParameter(f"{text!r}: give the port to bind on this node, e.g. 8080:80",
                                     param_hint="--publish")
        ports.append({k: port[k] for k in ("protocol", "published_port", "target_port")})
    resources = {"limits": {"memory_bytes": memory or 0, "nano_cpus": cpus or 0},
                 "pids_limit": pids_limit or 0}
    policy = parse_restart(restart)
    if auto_remove and policy["name"] != "no":
        raise click.UsageError("--restart and --rm conflict: --restart runs the container "
                               "again when it exits, --rm removes it then; give one of them")
    body = {"name": name, "container": container, "resources": resources,
            "networks": list(networks), "ports": ports, "auto_remove": auto_remove,
            "restart_policy": policy}
    if detach:
        click.echo(cli.call("POST", "/containers/run", body, timeout=330)["id"])
        return
    _run_attached(cli, body)


def parse_restart(text: str) -> dict:
    """Docker's --restart: no | on-failure[:MAX_RETRIES] | always | unless-stopped."""
    name, sep, count = text.partition(":")
    if name not in RESTART_POLICIES:
        raise click.BadParameter(f"{text!r}: use no, on-failure[:MAX_RETRIES], always or "
                                 "unless-stopped", param_hint="--restart")
    if not sep:
        return {"name": name, "maximum_retry_count": 0}
    if name != "on-failure":
        raise click.BadParameter(f"{text!r}: only on-failure takes a maximum retry count "
                                 "(e.g. on-failure:3)", param_hint="--restart")
    if not count.isdigit():
        raise click.BadParameter(f"{text!r}: the maximum retry count must be a whole number "
                                 "(e.g. on-failure:3)", param_hint="--restart")
    return {"name": name, "maximum_retry_count": int(count)}


def _run_attached(cli: Cli, body: dict) -> None:
    """Its output as it comes, then its exit code as ours (125: the run ended without one)."""
    name = body["name"] or "the container"
    for record in cli.stream("POST", "/containers/run", {**body, "attach": True}):
        if "l" in record:
            click.echo(record["l"], err=record["s"] == "stderr")
        elif "exit" in record:
            code = record["exit"]["exit_code"]
            if code is None or record["exit"]["oom_killed"]:
                click.echo(f"{name}: {record['exit']['message']}", err=True)
            sys.exit(125 if code is None else code)
        else:
            name = record.get("name", name)
    click.echo(f"Error: the daemon stopped sending before {name} exited; see 'shoal container "
               "ls --all'", err=True)
    sys.exit(125)


@container.command("stop")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_cli
def container_stop(cli: Cli, refs) -> None:
    """Stop standalone containers (stop signal, then SIGKILL after the grace period)."""
    for ref in refs:
        cli.call("POST", api_path("containers", ref, "stop"), timeout=90)
        click.echo(ref)


@container.command("rm")
@click.option("-f", "--force", is_flag=True, help="Stop a running container first")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_cli
def container_rm(cli: Cli, force, refs) -> None:
    """Remove standalone containers (a service's containers go with their service)."""
    for ref in refs:
        cli.call("DELETE", api_path("containers", ref), params={"force": "true"} if force else None,
                 timeout=90)
        click.echo(ref)


@container.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and stream it")
@click.option("-t", "--tty", "tty_", is_flag=True, help="Allocate a pseudo-TTY")
@click.argument("ref")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_cli
def container_exec(cli: Cli, interactive, tty_, ref, argv) -> None:
    """Run a command in a running container: CONTAINER -- CMD [ARG...] (task id or name)."""
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if interactive or tty_:  # streamed both ways (shoal/cli/exec.py)
        from shoal.cli.exec import container_exec_interactive
        container_exec_interactive(cli, ref, argv, tty_=tty_, interactive=interactive)
    result = cli.call("POST", api_path("containers", ref, "exec"), {"argv": argv}, timeout=300)
    sys.stdout.write(result["output"])
    sys.stdout.flush()
    sys.exit(result["exit_code"])


register_container_cmds(container)  # top, stats, kill


@container.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("--tail", default="all", help="Number of lines to show from the end of the logs")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.option("--since", default="", help=SINCE_HELP)
@click.option("--until", default="", help=UNTIL_HELP)
@click.argument("ref")
@pass_cli
def container_logs(cli: Cli, follow, tail, timestamps, since, until, ref) -> None:
    """Fetch a container's logs (across its rotated log files)."""
    params = {"follow": str(follow).lower(), "tail": tail, **log_window(since, until)}
    for e in cli.stream("GET", api_path("containers", ref, "logs"), params=params):
        stamp = rfc3339_nano(e["t"]) + " " if timestamps else ""
        click.echo(stamp + e["l"], err=e["s"] == "stderr")


@click.group()
def image() -> None:
    """Manage images on this node."""


image.add_command(image_build)


@image.command("load")
@click.option("-i", "--input", "path", required=True, type=click.Path(exists=True),
              help="Read from this `docker save` tarball or OCI layout (dir or tar)")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output")
@pass_cli
def image_load(cli: Cli, path, quiet) -> None:
    """Load images from a `docker save` tarball or an OCI image layout, under the names it
    gives them."""
    img = cli.call("POST", "/images/load", {"path": os.path.abspath(path)}, timeout=600)
    if not quiet:
        for line in img["loaded"]:
            click.echo(line)


@image.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.argument("ref")
@pass_cli
def image_import(cli: Cli, path, ref) -> None:
    """Load an image archive as NAME:TAG (the old name of `image load`)."""
    click.echo("hint: 'shoal image import' is now 'shoal image load -i FILE' (then 'shoal "
               "image tag' to name it)", err=True)
    img = cli.call("POST", "/images/load", {"path": os.path.abspath(path), "ref": ref},
                   timeout=600)
    click.echo(f"Loaded image: {img['ref']} ({img['id'][:19]})")


@image.command("pull")
@click.option("--insecure-registry", is_flag=True, help="Reach the registry over plain HTTP")
@click.argument("ref")
@pass_cli
def image_pull(cli: Cli, insecure_registry, ref) -> None:
    """Pull an image from a registry (distribution API v2), with your `shoal login`
    credentials for it if you have any."""
    body: dict = {"ref": ref, "insecure": insecure_registry}
    host = parse_ref(ref).host
    creds = DockerConfig().credentials(host) if host else None
    if creds is not None:
        body["auth"] = creds.plain()
    img = cli.call("POST", "/images/pull", body, timeout=900)
    click.echo(f"Pulled {img['ref']} ({img['id'][:19]})")


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_cli
def image_ls(cli: Cli, quiet, fmt) -> None:
    """List images on this node."""
    items = cli.call("GET", "/images")
    print_listing(items, quiet=quiet, fmt=fmt, headers=["IMAGE", "ID", "SIZE"],
                  rows=lambda items: [[i["ref"], i["id"][7:19], format_size(i["size"])] for i in items])


@image.command("rm")
@click.option("-f", "--force", is_flag=True,
              help="Untag an image a container still uses (it goes once unused)")
@click.argument("refs", nargs=-1, required=True, metavar="IMAGE...")
@pass_cli
def image_rm(cli: Cli, force, refs) -> None:
    """Remove one or more images (refused while a container on this node uses one)."""
    answer = cli.call("POST", "/images/remove", {"refs": list(refs), "force": force})
    _print_deleted(answer["deleted"])
    for message in answer["errors"]:
        click.echo(f"Error: {message}", err=True)
    if answer["errors"]:
        sys.exit(1)


def _print_deleted(lines: list[str]) -> None:
    for line in lines:  # "untagged REF" / "deleted ID", as docker's "Untagged: REF"
        verb, _, what = line.partition(" ")
        click.echo(f"{verb.capitalize()}: {what}")


@image.command("push")
@click.option("--insecure-registry", is_flag=True, help="Reach the registry over plain HTTP")
@click.option("-q", "--quiet", is_flag=True, help="Print only the pushed digest line")
@click.argument("ref")
@pass_cli
def image_push(cli: Cli, insecure_registry, quiet, ref) -> None:
    """Push an image of this node to a registry, with your `shoal login` credentials for it
    if you have any."""
    body: dict = {"ref": ref, "insecure": insecure_registry}
    host = parse_ref(ref).host
    creds = DockerConfig().credentials(host) if host else None
    if creds is not None:
        body["auth"] = creds.plain()
    last: dict[str, str] = {}
    for record in cli.stream("POST", "/images/push", body):
        status, layer = record.get("status", ""), record.get("id")
        if layer is None:
            if not quiet or "aux" in record:
                click.echo(status)
        elif not quiet and last.get(layer) != status:  # a line per change, as docker's
            last[layer] = status
            click.echo(f"{layer}: {status}")


@image.command("tag")
@click.argument("source", metavar="SOURCE_IMAGE")
@click.argument("target", metavar="TARGET_IMAGE")
@pass_cli
def image_tag(cli: Cli, source, target) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    cli.call("POST", "/images/tag", {"source": source, "target": target})


@image.command("inspect")
@click.argument("refs", nargs=-1, required=True, metavar="IMAGE...")
@pass_cli
def image_inspect(cli: Cli, refs) -> None:
    """Display detailed information on images: config, layers, digests, size."""
    print_json(cli.call("POST", "/images/inspect", {"refs": list(refs)}))


@image.command("history")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the output")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.argument("ref", metavar="IMAGE")
@pass_cli
def image_history(cli: Cli, no_trunc, quiet, fmt, ref) -> None:
    """Show the history of an image, from its config, newest step first."""
    items = cli.call("POST", "/images/history", {"ref": ref})

    def cut(text: str, n: int) -> str:
        return text if no_trunc or len(text) <= n else text[:n - 3] + "..."
    print_listing(items, quiet=quiet, fmt=fmt,
                  headers=["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
                  rows=lambda items: [[i["id"] if no_trunc or i["id"] == "<missing>"
                                       else i["id"][7:19], i["created"],
                                       cut(i["created_by"], 45), format_size(i["size"]),
                                       i["comment"]] for i in items])


@image.command("prune")
@click.option("-a", "--all", "all_unused", is_flag=True,
              help="Remove all images no container uses, not just dangling ones")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@pass_cli
def image_prune(cli: Cli, all_unused, force) -> None:
    """Remove unused images, and the layers no image uses."""
    which = ("all images without at least one container associated to them" if all_unused
             else "all dangling images")
    if not force and not click.confirm(f"WARNING! This will remove {which}.\nAre you sure "
                                       "you want to continue?", default=False):
        return
    answer = cli.call("POST", "/images/prune", {"all": all_unused}, timeout=600)
    if answer["deleted"]:
        click.echo("Deleted Images:")
        for line in answer["deleted"]:
            verb, _, what = line.partition(" ")
            click.echo(f"{verb}: {what}")
        click.echo()
    click.echo(f"Total reclaimed space: {format_size(answer['reclaimed'])}")


@image.command("save")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Write to this file (written whole or not at all)")
@click.argument("refs", nargs=-1, required=True, metavar="IMAGE...")
@pass_cli
def image_save(cli: Cli, output, refs) -> None:
    """Save images to a `docker save` tarball that `docker load` and skopeo read."""
    cli.call("POST", "/images/save", {"refs": list(refs), "output": os.path.abspath(output)},
             timeout=1800)
