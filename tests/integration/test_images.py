"""The image store end to end: import, tag, rmi, inspect, prune, save/load (checked with
skopeo and umoci as independent peers), hostile archives, export."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import Minidock


class ImageCli:
    """The ``minidock`` command line against the ``md`` fixture's state root, with the
    helpers these tests need to look inside the image store."""

    def __init__(self, md: Minidock) -> None:
        self.md = md
        self.root = md.root
        self.env = dict(md.env)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300, cwd: str = "/",
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "minidock", *args], env=self.env, capture_output=True,
            text=True, timeout=timeout, input=input,
            stdin=None if input is not None else subprocess.DEVNULL, cwd=cwd,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"minidock {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "minidock", *args], env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, cwd="/",
        )  # fmt: skip

    def store(self, *parts: str) -> Path:
        return Path(self.root, "images", *parts)

    def assert_consistent(self) -> None:
        """Every image the index names is whole: manifest, config, layer blobs, layer dirs."""
        index = json.loads(self.store("index.json").read_text())
        for image_id, record in index["images"].items():
            manifest = json.loads(self.store("blobs/sha256", record["manifest"][7:]).read_text())
            config_blob = self.store("blobs/sha256", manifest["config"]["digest"][7:])
            assert hashlib.sha256(config_blob.read_bytes()).hexdigest() == image_id
            for layer in manifest["layers"]:
                assert self.store("blobs/sha256", layer["digest"][7:]).is_file()
            for diff_id in json.loads(config_blob.read_text())["rootfs"]["diff_ids"]:
                assert self.store("layers", diff_id[7:]).is_dir()
        for manifest in index["tags"].values():
            assert any(r["manifest"] == manifest for r in index["images"].values())


@pytest.fixture
def mdi(md: Minidock) -> ImageCli:
    return ImageCli(md)


needs_skopeo = pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo")
needs_umoci = pytest.mark.skipif(
    not (shutil.which("umoci") and shutil.which("skopeo")), reason="needs umoci and skopeo"
)


# --- the store ---------------------------------------------------------------------------------
def test_imported_image_is_listed_and_inspected(mdi: ImageCli) -> None:
    lines = mdi("image", "ls").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].startswith("busybox ")
    info = json.loads(mdi("image", "inspect", "busybox").stdout)[0]
    assert info["Id"].startswith("sha256:") and len(info["Id"]) == 71
    assert info["RepoTags"] == ["busybox:latest"]
    assert info["Config"]["Cmd"] == ["sh"]
    assert info["RootFS"]["Type"] == "layers" and len(info["RootFS"]["Layers"]) == 1
    assert info["Size"] > 1_000_000
    # the ID is the digest of the config blob, as in Docker
    config = mdi.store("blobs/sha256", info["Id"][7:]).read_bytes()
    assert hashlib.sha256(config).hexdigest() == info["Id"][7:]
    assert mdi("image", "inspect", "-f", "{{.Config.Cmd}}", "busybox").stdout == "['sh']\n"
    mdi.assert_consistent()


def test_tag_and_untag(mdi: ImageCli) -> None:
    image_id = json.loads(mdi("image", "inspect", "busybox").stdout)[0]["Id"]
    mdi("tag", "busybox", "registry.local:5000/tools/bb:v1")
    again = json.loads(mdi("image", "inspect", "registry.local:5000/tools/bb:v1").stdout)[0]
    assert again["Id"] == image_id
    assert again["RepoTags"] == ["busybox:latest", "registry.local:5000/tools/bb:v1"]
    out = mdi("rmi", "registry.local:5000/tools/bb:v1").stdout
    assert out == "Untagged: registry.local:5000/tools/bb:v1\n"
    assert mdi("run", "--rm", "busybox", "true").returncode == 0


def test_rmi_refuses_an_image_a_container_uses(mdi: ImageCli, md: Minidock) -> None:
    mdi("tag", "busybox", "victim")
    mdi("rmi", "busybox")  # only untags: "victim" still names it
    md("create", "--name", "user", "victim", "true")
    refused = mdi("rmi", "victim", check=False)
    assert refused.returncode == 125
    assert "used by a container" in refused.stderr
    assert len(os.listdir(mdi.store("layers"))) == 1
    md("rm", "user")
    out = mdi("rmi", "victim").stdout
    assert out.startswith("Untagged: victim:latest\nDeleted: sha256:")
    assert mdi("image", "ls", "-q").stdout == ""
    assert os.listdir(mdi.store("layers")) == []  # nothing uses the layer: swept
    assert os.listdir(mdi.store("blobs/sha256")) == []


def test_history(mdi: ImageCli, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nENV A=1\nRUN touch /made\n")
    mdi("build", "-t", "hist", str(tmp_path))
    lines = mdi("history", "hist").stdout.splitlines()
    assert lines[0].split()[:2] == ["IMAGE", "CREATED"]
    assert "/bin/sh -c touch /made" in lines[1]
    assert "ENV A=1" in lines[2]
    assert "Imported from" in lines[3]
    assert len(mdi("history", "-q", "hist").stdout.split()) == 3


def test_import_a_tarball_with_changes(mdi: ImageCli, busybox_rootfs: str, tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", busybox_rootfs, "."], check=True)
    mdi(
        "import",
        "--change",
        "ENV GREETING=hello",
        "--change",
        'ENTRYPOINT ["sh", "-c", "echo $GREETING"]',
        str(tarball),
        "fromtar:1",
    )
    assert mdi("run", "--rm", "fromtar:1").stdout == "hello\n"
    layer = json.loads(mdi("image", "inspect", "fromtar:1").stdout)[0]["RootFS"]["Layers"][0]
    # the DiffID is the digest of the *uncompressed* tarball
    uncompressed = subprocess.run(["gzip", "-dc", str(tarball)], capture_output=True).stdout
    assert layer == f"sha256:{hashlib.sha256(uncompressed).hexdigest()}"


def test_prune_deletes_dangling_images_and_collects_their_layers(
    mdi: ImageCli, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo one > /one\n")
    mdi("build", "-t", "first", str(tmp_path))
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo two > /two\n")
    mdi("build", "-t", "first", str(tmp_path))  # the old "first" is now dangling
    listed = mdi("image", "ls").stdout
    assert "<none>" in listed
    assert len(os.listdir(mdi.store("layers"))) == 3
    out = mdi("image", "prune", "-f").stdout
    assert out.startswith("Deleted Images:\ndeleted: sha256:")
    assert "Total reclaimed space:" in out
    assert "<none>" not in mdi("image", "ls").stdout
    assert len(os.listdir(mdi.store("layers"))) == 2
    assert mdi("run", "--rm", "first", "cat", "/two").stdout == "two\n"
    mdi.assert_consistent()


# --- save and load -----------------------------------------------------------------------------
@needs_skopeo
def test_save_is_readable_by_skopeo_as_both_archive_kinds(mdi: ImageCli, tmp_path: Path) -> None:
    out = tmp_path / "busybox.tar"
    mdi("save", "-o", str(out), "busybox")
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= set(names)
    info = json.loads(mdi("image", "inspect", "busybox").stdout)[0]
    for kind in ("docker-archive", "oci-archive"):
        proc = subprocess.run(
            ["skopeo", "inspect", "--config", f"{kind}:{out}"], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        config = json.loads(proc.stdout)
        assert config["config"]["Cmd"] == ["sh"]
        assert config["rootfs"]["diff_ids"] == info["RootFS"]["Layers"]


def test_save_then_load_round_trip(mdi: ImageCli, tmp_path: Path) -> None:
    out = tmp_path / "busybox.tar"
    mdi("save", "-o", str(out), "busybox")
    before = json.loads(mdi("image", "inspect", "busybox").stdout)[0]["Id"]
    mdi("rmi", "busybox")
    assert mdi("image", "ls", "-q").stdout == ""
    assert mdi("load", "-i", str(out)).stdout == "Loaded image: busybox:latest\n"
    assert json.loads(mdi("image", "inspect", "busybox").stdout)[0]["Id"] == before
    assert mdi("run", "--rm", "busybox", "echo", "back").stdout == "back\n"
    mdi.assert_consistent()


@needs_umoci
@pytest.mark.parametrize("kind", ["oci-archive", "docker-archive"])
def test_an_image_made_by_umoci_and_skopeo_loads_and_runs(
    mdi: ImageCli, busybox_rootfs: str, tmp_path: Path, kind: str
) -> None:
    layout = tmp_path / "layout"

    def run(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:base")
    run("umoci", "insert", "--image", f"{layout}:base", busybox_rootfs, "/")
    run("umoci", "config", "--image", f"{layout}:base", "--config.env", "WHO=umoci")
    run(
        "umoci", "config", "--image", f"{layout}:base",
        "--config.cmd", "sh", "--config.cmd=-c", "--config.cmd", "echo made by $WHO",
    )  # fmt: skip
    archive = tmp_path / "peer.tar"
    run("skopeo", "copy", f"oci:{layout}:base", f"{kind}:{archive}:peer/made:1.0")
    assert mdi("load", "-i", str(archive)).stdout == "Loaded image: peer/made:1.0\n"
    assert mdi("run", "--rm", "peer/made:1.0").stdout == "made by umoci\n"
    mdi.assert_consistent()


def _docker_archive(path: Path, layer: bytes, name: str = "evil:latest") -> None:
    """A Docker archive of one image whose single layer is ``layer`` (DiffID correct)."""
    diff_id = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [name], "Layers": ["l.tar"]}])
    with tarfile.open(path, "w") as tar:
        for member, data in (
            ("manifest.json", manifest.encode()),
            ("config.json", config),
            ("l.tar", layer),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _layer(*members: tuple[str, str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data.encode()))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            info.linkname = data
            tar.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize(
    "case", ["dot-dot", "absolute", "symlink then write", "hardlink escape", "hardlink absolute"]
)
def test_hostile_layers_are_refused_and_nothing_outside_changes(
    mdi: ImageCli, tmp_path: Path, case: str
) -> None:
    outside = tmp_path / "outside"  # beside the state root (tmp_path/root)
    outside.mkdir()
    sentinel = outside / "sentinel"
    sentinel.write_text("untouched\n")
    climb = "../" * 12 + str(sentinel).lstrip("/")
    members = {
        "dot-dot": [("bin/../" + climb, "file", "owned\n")],
        "absolute": [(str(sentinel), "file", "owned\n")],
        "symlink then write": [("out", "symlink", str(outside)), ("out/sentinel", "file", "x")],
        "hardlink escape": [("pw", "hardlink", climb)],
        "hardlink absolute": [("pw", "hardlink", str(sentinel))],
    }[case]
    archive = tmp_path / "evil.tar"
    _docker_archive(archive, _layer(*members))
    layers_before = sorted(os.listdir(mdi.store("layers")))
    proc = mdi("load", "-i", str(archive), check=False)
    assert proc.returncode == 125
    assert proc.stderr.startswith("minidock: refusing layer:")
    assert len(proc.stderr.splitlines()) == 1
    assert sentinel.read_text() == "untouched\n" and sentinel.stat().st_nlink == 1
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel"]
    assert "evil" not in mdi("image", "ls", "-a").stdout
    assert sorted(os.listdir(mdi.store("layers"))) == layers_before
    assert os.listdir(mdi.store("tmp")) == []  # the half-unpacked layer was removed
    mdi.assert_consistent()


def test_a_layer_that_does_not_match_its_diff_id_is_refused(mdi: ImageCli, tmp_path: Path) -> None:
    archive = tmp_path / "lying.tar"
    _docker_archive(archive, _layer(("a", "file", "x")))
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    files["l.tar"] = _layer(("b", "file", "y"))
    with tarfile.open(archive, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    proc = mdi("load", "-i", str(archive), check=False)
    assert proc.returncode == 125 and "but the image says" in proc.stderr
    assert "evil" not in mdi("image", "ls", "-a").stdout


# --- export ------------------------------------------------------------------------------------
def test_export_a_stopped_container(mdi: ImageCli, md: Minidock, tmp_path: Path) -> None:
    md("run", "--name", "exp", "busybox", "sh", "-c", "echo changed > /tmp/note && rm /bin/vi")
    out = tmp_path / "fs.tar"
    mdi("export", "-o", str(out), "exp")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("tmp/note").read() == b"changed\n"  # type: ignore[union-attr]
    assert "bin/busybox" in names and "bin/sh" in names
    assert "bin/vi" not in names  # deleted in the container: gone from the merged view
    assert not os.path.ismount(md.engine.find("exp").rootfs)
