"""``minidock build``: the web sample, the build cache, multi-stage builds, RUN in real
containers, COPY/ADD rules, failures, and a build killed half-way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Minidock, wait_for
from tests.integration.test_images import ImageCli


@pytest.fixture
def mdi(md: Minidock) -> ImageCli:
    return ImageCli(md)


def steps(output: str) -> list[str]:
    """What each step did: "cache", "built" (with the ID line), per ``Step n/m`` header."""
    found = []
    for block in re.split(r"^Step \d+/\d+ : ", output, flags=re.M)[1:]:
        found.append("cache" if " ---> Using cache" in block else "built")
    return found


def dockerfile(context: Path, text: str, **files: str) -> Path:
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(text)
    for name, content in files.items():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text(content)
    return context


def test_web_sample_builds_and_serves_its_page(mdi: ImageCli) -> None:
    out = mdi("build", "-t", "web-test", str(REPO / "rootfs-samples/web")).stdout
    assert "Step 1/4 : FROM busybox" in out
    assert "Successfully tagged web-test:latest" in out
    page = mdi("run", "--rm", "web-test", "cat", "/var/www/index.html").stdout
    assert page == (REPO / "rootfs-samples/web/index.html").read_text()
    config = json.loads(mdi("image", "inspect", "web-test").stdout)[0]["Config"]
    assert config["Cmd"] == ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    assert config["ExposedPorts"] == {"80/tcp": {}}
    # httpd serves it (here on the container's own loopback, not the host's port 80)
    served = mdi(
        "run", "--rm", "web-test", "sh", "-c",
        "httpd -p 127.0.0.1:80 -h /var/www && wget -qO- http://127.0.0.1/",
    )  # fmt: skip
    assert served.stdout == page
    mdi.assert_consistent()


def test_unchanged_rebuild_uses_the_cache_for_every_step(mdi: ImageCli, tmp_path: Path) -> None:
    ctx = dockerfile(
        tmp_path / "ctx",
        "FROM busybox\nRUN sleep 1 && echo one > /one\nCOPY a.txt /a.txt\nENV X=1\n"
        'CMD ["cat", "/a.txt"]\n',
        **{"a.txt": "first\n"},
    )
    start = time.monotonic()
    first = mdi("build", "-t", "cached", str(ctx)).stdout
    first_time = time.monotonic() - start
    start = time.monotonic()
    again = mdi("build", "-t", "cached", str(ctx)).stdout
    again_time = time.monotonic() - start
    assert steps(first) == ["built"] * 5
    assert steps(again) == ["built", "cache", "cache", "cache", "cache"]  # FROM is no step
    assert again.splitlines()[-2] == first.splitlines()[-2]  # "Successfully built <same id>"
    assert again_time < first_time and again_time < 5
    no_cache = mdi("build", "--no-cache", "-t", "cached", str(ctx)).stdout
    assert "Using cache" not in no_cache


def test_a_changed_copied_file_rebuilds_from_that_step_only(mdi: ImageCli, tmp_path: Path) -> None:
    ctx = dockerfile(
        tmp_path / "ctx",
        "FROM busybox\nRUN echo one > /one\nCOPY a.txt /a.txt\nRUN cat /one /a.txt > /b.txt\n"
        'CMD ["cat", "/b.txt"]\n',
        **{"a.txt": "first\n", "unrelated.txt": "x\n"},
    )
    mdi("build", "-t", "partial", str(ctx))
    assert mdi("run", "--rm", "partial").stdout == "one\nfirst\n"
    (ctx / "unrelated.txt").write_text("changed, but nobody copies it\n")
    os.utime(ctx / "a.txt")  # a new mtime alone does not change the content hash
    assert steps(mdi("build", "-t", "partial", str(ctx)).stdout) == ["built"] + ["cache"] * 4
    (ctx / "a.txt").write_text("second\n")
    out = mdi("build", "-t", "partial", str(ctx)).stdout
    assert steps(out) == ["built", "cache", "built", "built", "built"]
    assert mdi("run", "--rm", "partial").stdout == "one\nsecond\n"
    (ctx / "a.txt").chmod(0o600)  # modes count too
    assert steps(mdi("build", "-t", "partial", str(ctx)).stdout)[2] == "built"


def test_multi_stage_copies_an_artefact_from_a_builder_stage(mdi: ImageCli, tmp_path: Path) -> None:
    ctx = dockerfile(
        tmp_path / "ctx",
        "ARG BASE=busybox\n"
        "FROM $BASE AS builder\n"
        "ARG VERSION=0\n"
        "WORKDIR /src\n"
        "COPY main.sh .\n"
        'RUN sed "s/@VERSION@/$VERSION/" main.sh > /src/app && chmod 755 /src/app\n'
        "FROM scratch AS unused\n"
        "COPY main.sh /\n"
        "FROM busybox\n"
        "COPY --from=builder --chown=web /src/app /usr/local/bin/app\n"
        "USER web\n"
        'ENTRYPOINT ["app"]\n',
        **{"main.sh": '#!/bin/sh\necho "app @VERSION@ as $(id -un)"\n'},
    )
    out = mdi("build", "--build-arg", "VERSION=2.1", "-t", "app", str(ctx)).stdout
    assert "Step 1/11 : FROM $BASE AS builder" in out
    assert mdi("run", "--rm", "app").stdout == "app 2.1 as web\n"
    owner = mdi("run", "--rm", "--entrypoint", "stat", "app", "-c", "%U %a", "/usr/local/bin/app")
    assert owner.stdout == "web 755\n"
    # only the final stage's layers are in the image: busybox + the copied binary
    assert len(json.loads(mdi("image", "inspect", "app").stdout)[0]["RootFS"]["Layers"]) == 2
    target = mdi("build", "--target", "unused", "-t", "just-scratch", str(ctx)).stdout
    assert "Step 6/7 : FROM scratch AS unused" in target and "Step 8/" not in target
    (layer,) = json.loads(mdi("image", "inspect", "just-scratch").stdout)[0]["RootFS"]["Layers"]
    assert os.listdir(mdi.store("layers", layer[7:])) == ["main.sh"]


def test_run_steps_see_build_args_env_workdir_and_user(mdi: ImageCli, tmp_path: Path) -> None:
    ctx = dockerfile(
        tmp_path / "ctx",
        "FROM busybox\n"
        "ARG COLOR=blue\n"
        "ENV SHAPE=circle\n"
        "WORKDIR /work\n"
        'RUN echo "$COLOR $SHAPE $(pwd) $(id -u)" > /work/seen && rm /bin/vi\n'
        "USER web\n"
        "RUN id -un > /tmp/who\n"
        'SHELL ["/bin/sh", "-ec"]\n'
        "RUN test -f /work/seen\n",
    )
    mdi("build", "--build-arg", "COLOR=red", "--build-arg", "UNUSED=1", "-t", "args", str(ctx))
    assert mdi("run", "--rm", "args", "cat", "/work/seen").stdout == "red circle /work 0\n"
    assert mdi("run", "--rm", "args", "cat", "/tmp/who").stdout == "web\n"
    assert mdi("run", "--rm", "args", "ls", "/bin/vi", check=False).returncode != 0
    env = json.loads(mdi("image", "inspect", "args").stdout)[0]["Config"]["Env"]
    assert "SHAPE=circle" in env and not any(e.startswith("COLOR=") for e in env)
    history = mdi("history", "--no-trunc", "args").stdout
    assert "|1 COLOR=red /bin/sh -c echo" in history
    # the mount points the runtime made for /etc/hosts etc. are no part of any layer
    info = json.loads(mdi("image", "inspect", "args").stdout)[0]
    for diff_id in info["RootFS"]["Layers"][1:]:
        layer = mdi.store("layers", diff_id[7:])
        assert not (layer / "etc/hosts").exists() and not (layer / "proc").exists()


def test_copy_and_add_rules(mdi: ImageCli, tmp_path: Path) -> None:
    ctx = dockerfile(
        tmp_path / "ctx",
        "FROM busybox\n"
        "COPY dir /dst/\n"
        "COPY *.txt /multi/\n"
        "COPY --chmod=0700 one.txt /single\n"
        "ADD bundle.tar.gz /unpacked\n"
        "COPY link-to-one /followed\n",
        **{
            "dir/a": "a\n",
            "dir/sub/b": "b\n",
            "dir/skip.log": "ignored\n",
            "one.txt": "1\n",
            "two.txt": "2\n",
            ".dockerignore": "**/*.log\n",
        },
    )
    (ctx / "link-to-one").symlink_to("one.txt")
    (tmp_path / "payload").mkdir()
    (tmp_path / "payload/inside").write_text("from the tarball\n")
    subprocess.run(
        ["tar", "-czf", str(ctx / "bundle.tar.gz"), "-C", str(tmp_path / "payload"), "."],
        check=True,
    )
    mdi("build", "-t", "copies", str(ctx))

    def sh(command: str) -> str:
        return mdi("run", "--rm", "copies", "sh", "-c", command).stdout

    assert sh("cat /dst/a /dst/sub/b") == "a\nb\n"
    assert sh("ls /dst") == "a\nsub\n"  # the .log file was excluded by .dockerignore
    assert sh("ls /multi") == "one.txt\ntwo.txt\n"
    assert sh("stat -c '%a %u' /single") == "700 0\n"
    assert sh("cat /unpacked/inside") == "from the tarball\n"
    assert sh("cat /followed") == "1\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "FROM busybox\nRUN exit 3\n",
            "The command '/bin/sh -c exit 3' returned a non-zero code: 3",
        ),
        ("FROM busybox\nCOPY missing.txt /\n", "Dockerfile:2: COPY failed: file not found"),
        ("FROM busybox\nCOPY ../outside /\n", "Dockerfile:2: COPY: forbidden path outside"),
        ("FROM nosuchimage\n", "Dockerfile:1: FROM nosuchimage: No such image"),
        ("FROM busybox\nRUN true\nFORM x\n", "Dockerfile:3: unknown instruction: FORM"),
    ],
)
def test_failures_name_the_step_and_leave_no_container(
    mdi: ImageCli, tmp_path: Path, text: str, message: str
) -> None:
    ctx = dockerfile(tmp_path / "ctx", text)
    proc = mdi("build", "-t", "broken", str(ctx), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line
    assert mdi("ps", "-aq").stdout == ""
    assert "broken" not in mdi("image", "ls").stdout


def test_a_build_killed_half_way_leaves_the_store_consistent(mdi: ImageCli, tmp_path: Path) -> None:
    ctx = dockerfile(
        tmp_path / "ctx",
        "FROM busybox\nCOPY a.txt /\nRUN dd if=/dev/zero of=/big bs=1M count=8 && sleep 30\n",
        **{"a.txt": "a\n"},
    )
    build = mdi.popen("build", "-t", "killed", str(ctx))
    assert build.stdout is not None
    for line in build.stdout:
        if "Running in" in line:
            break
    time.sleep(1)
    build.send_signal(signal.SIGKILL)
    build.wait()
    build.stdout.close()
    assert "killed" not in mdi("image", "ls", "-a").stdout
    mdi.assert_consistent()
    # a new build works, and its cache has the steps that finished before the kill
    dockerfile(ctx, "FROM busybox\nCOPY a.txt /\nRUN echo done > /done\n")
    out = mdi("build", "-t", "after", str(ctx)).stdout
    assert steps(out) == ["built", "cache", "built"]
    assert mdi("run", "--rm", "after", "cat", "/done").stdout == "done\n"
    # the killed build's container is still there (Docker's classic builder leaves it too);
    # once it is gone, prune sweeps the half-made work and nothing is left behind
    for cid in mdi("ps", "-aq").stdout.split():
        mdi("rm", "-f", cid)
    assert wait_for(lambda: mdi("ps", "-aq").stdout == "")
    mdi("image", "prune", "-f", timeout=60)
    assert os.listdir(mdi.store("tmp")) == []
    mdi.assert_consistent()
    assert mdi("run", "--rm", "after", "cat", "/done").stdout == "done\n"
