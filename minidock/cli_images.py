"""The image commands: ``build``, ``tag``, ``save``, ``load``, ``history``, ``export``, and
the ``image`` group (``inspect``, ``ls``, ``rm``, ``prune``).

Like the rest of the CLI (``cli.py``, whose helpers these use), each command parses its
flags, calls the image store, the builder or the archive module, and prints the result.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from minidock.cli import _CONTEXT, _ago, _engine, _human_bytes, _table, echo_inspected
from minidock.errors import ImageNotFound, InvalidArgument, MinidockError
from minidock.state import Status


def _in_use(engine: Any, force: bool) -> set[str]:
    """IDs of images that containers use. ``--force`` overrides stopped containers only:
    a running container's layers are mounted, so its image can't go (as in Docker)."""
    return {c.record()["Image"] for c in engine.containers()
            if not force or c.status() in (Status.RUNNING, Status.PAUSED)}  # fmt: skip


def _build_args(items: tuple[str, ...]) -> dict[str, str]:
    """``--build-arg KEY=VALUE``, or ``--build-arg KEY`` to take KEY from our environment."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid --build-arg {item!r}: expected KEY=VALUE")
        if sep:
            values[key] = value
        elif key in os.environ:
            values[key] = os.environ[key]
    return values


@click.command(context_settings=_CONTEXT)
@click.option("-t", "--tag", "tags", multiple=True, help="Name and optionally a tag (name:tag).")
@click.option(
    "-f", "--file", "dockerfile", help="Name of the Dockerfile (default PATH/Dockerfile)."
)
@click.option("--build-arg", multiple=True, help="Set a build-time variable (KEY=VALUE).")
@click.option("--no-cache", is_flag=True, help="Do not use the cache when building the image.")
@click.option("--target", help="Set the target build stage to build.")
@click.argument("path")
@click.pass_context
def build(
    ctx: click.Context,
    tags: tuple[str, ...],
    dockerfile: str | None,
    build_arg: tuple[str, ...],
    no_cache: bool,
    target: str | None,
    path: str,
) -> None:
    """Build an image from a Dockerfile."""
    from minidock.build import Builder, BuildOptions
    from minidock.monitor import Attach

    opts = BuildOptions(
        context=path,
        dockerfile=dockerfile,
        tags=list(tags),
        build_args=_build_args(build_arg),
        no_cache=no_cache,
        target=target,
    )
    attach = Attach(stdout=sys.stdout.fileno(), stderr=sys.stderr.fileno(), stdin=None)
    Builder(_engine(ctx), opts, click.echo, attach).build()


@click.command(context_settings=_CONTEXT)
@click.argument("source")
@click.argument("target")
@click.pass_context
def tag(ctx: click.Context, source: str, target: str) -> None:
    """Create a tag TARGET that refers to SOURCE."""
    _engine(ctx).images.tag(source, target)


@click.command(context_settings=_CONTEXT)
@click.option("-o", "--output", help="Write to a file, instead of STDOUT.")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def save(ctx: click.Context, output: str | None, refs: tuple[str, ...]) -> None:
    """Save one or more images to a tar archive (OCI layout + Docker manifest.json)."""
    from minidock import archive

    images = _engine(ctx).images
    if output:
        archive.save_to_file(images, list(refs), output)
        return
    if sys.stdout.isatty():
        raise MinidockError("cowardly refusing to save to a terminal: use -o or redirect")
    archive.save(images, list(refs), sys.stdout.buffer)


@click.command(context_settings=_CONTEXT)
@click.option("-i", "--input", "source", help="Read from a tar archive file, instead of STDIN.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output.")
@click.pass_context
def load(ctx: click.Context, source: str | None, quiet: bool) -> None:
    """Load images from a Docker or OCI archive (as written by save, docker, skopeo)."""
    import tempfile

    from minidock import archive

    images = _engine(ctx).images
    if source is None:  # the archive is read by name, so spool STDIN to a file first
        with tempfile.NamedTemporaryFile(prefix="minidock-load-") as spool:
            spool.write(sys.stdin.buffer.read())
            spool.flush()
            loaded = archive.load(images, spool.name)
    else:
        loaded = archive.load(images, source)
    for image, names in loaded:
        if quiet:
            continue
        for name in names or [None]:
            click.echo(f"Loaded image: {name}" if name else f"Loaded image ID: sha256:{image.id}")


@click.command(context_settings=_CONTEXT)
@click.option("-H", "--human", default=True, help="Print sizes and dates in human readable form.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.argument("ref")
@click.pass_context
def history(ctx: click.Context, human: bool, no_trunc: bool, quiet: bool, ref: str) -> None:
    """Show the history of an image."""
    rows = _engine(ctx).images.history(ref)
    ids = [r["Id"] if no_trunc or r["Id"] == "<missing>" else r["Id"][7:19] for r in rows]
    if quiet:
        for i in ids:
            click.echo(i)
        return
    table = []
    for i, r in zip(ids, rows, strict=True):
        created_by = r["CreatedBy"]
        if not no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        table.append(
            [
                i,
                _ago(r["Created"]) if human and r["Created"] else r["Created"],
                created_by,
                _human_bytes(r["Size"]) if human else str(r["Size"]),
                r["Comment"],
            ]
        )
    _table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], table)


@click.command(context_settings=_CONTEXT)
@click.option("-o", "--output", help="Write to a file, instead of STDOUT.")
@click.argument("container")
@click.pass_context
def export(ctx: click.Context, output: str | None, container: str) -> None:
    """Export a container's filesystem as a tar archive."""
    from minidock import archive

    engine = _engine(ctx)
    if output is None:
        if sys.stdout.isatty():
            raise MinidockError("cowardly refusing to export to a terminal: use -o or redirect")
        archive.export_container(engine, container, sys.stdout.buffer)
        return
    with open(output, "wb") as f:
        archive.export_container(engine, container, f)


# --- minidock image … ----------------------------------------------------------------------------
@click.group(context_settings=_CONTEXT)
def image() -> None:
    """Manage images."""


@image.command("inspect", context_settings=_CONTEXT)
@click.option("-f", "--format", "fmt", help="Format output using a template.")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def image_inspect(ctx: click.Context, fmt: str | None, refs: tuple[str, ...]) -> None:
    """Display detailed information on one or more images."""
    images = _engine(ctx).images
    echo_inspected([images.inspect(r) for r in refs], fmt)


@image.command("ls", context_settings=_CONTEXT)
@click.option("-a", "--all", "all_images", is_flag=True, help="Show intermediate images too.")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.pass_context
def image_ls(ctx: click.Context, all_images: bool, quiet: bool, no_trunc: bool) -> None:
    """List images."""
    rows = []
    for img in _engine(ctx).images.list(all_images):
        image_id = f"sha256:{img.id}" if no_trunc else img.id[:12]
        for name in img.repo_tags or ["<none>:<none>"]:
            repo, _, version = name.rpartition(":")
            rows.append(
                [
                    repo,
                    version,
                    image_id,
                    _ago(img.created) if img.created else "N/A",
                    _human_bytes(img.size),
                ]
            )
    if quiet:
        for row in rows:
            click.echo(row[2])
        return
    _table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)


@image.command("rm", context_settings=_CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Remove even if a container uses it.")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def image_rm(ctx: click.Context, force: bool, refs: tuple[str, ...]) -> None:
    """Remove one or more images (``rmi``)."""
    engine = _engine(ctx)
    in_use = _in_use(engine, force)
    for ref in refs:
        before = engine.images.remove(ref, in_use)
        try:
            after: list[str] | None = engine.images.get(f"sha256:{before.id}").repo_tags
        except ImageNotFound:
            after = None  # deleted, not only untagged
        for name in before.repo_tags:
            if after is None or name not in after:
                click.echo(f"Untagged: {name}")
        if after is None:
            click.echo(f"Deleted: sha256:{before.id}")


@image.command("prune", context_settings=_CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.pass_context
def image_prune(ctx: click.Context, force: bool) -> None:
    """Remove dangling images, and the layers and blobs no image needs any more."""
    if not force and not click.confirm(
        "WARNING! This will remove all dangling images.\nAre you sure you want to continue?"
    ):
        return
    engine = _engine(ctx)
    deleted, freed = engine.images.prune(_in_use(engine, False))
    if deleted:
        click.echo("Deleted Images:")
        for image_id in deleted:
            click.echo(f"deleted: sha256:{image_id}")
        click.echo()
    click.echo(f"Total reclaimed space: {_human_bytes(freed)}")


#: Everything this module adds to the ``minidock`` group (``rmi`` is ``image rm``).
COMMANDS = {
    "build": build,
    "tag": tag,
    "save": save,
    "load": load,
    "history": history,
    "export": export,
    "image": image,
    "rmi": image_rm,
}
