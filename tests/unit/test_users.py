"""-u resolution against the container's own /etc/passwd and /etc/group."""

from __future__ import annotations

from pathlib import Path

import pytest

from minidock.errors import InvalidArgument
from minidock.users import resolve


@pytest.fixture
def rootfs(tmp_path: Path) -> str:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\n"
    )
    (etc / "group").write_text("root:x:0:\nweb:x:1000:\nstaff:x:50:web\naudio:x:29:web,root\n")
    return str(tmp_path)


def test_names_and_numbers(rootfs: str) -> None:
    assert resolve(rootfs, "") == (0, 0, [29])
    assert resolve(rootfs, "web") == (1000, 1000, [29, 50])
    assert resolve(rootfs, "1000") == (1000, 1000, [29, 50])
    assert resolve(rootfs, "web:staff") == (1000, 50, [29])
    assert resolve(rootfs, "4242:4343") == (4242, 4343, [])


def test_unknown_names_are_errors(rootfs: str) -> None:
    with pytest.raises(InvalidArgument, match="unable to find user nobody"):
        resolve(rootfs, "nobody")
    with pytest.raises(InvalidArgument, match="unable to find group wheel"):
        resolve(rootfs, "web:wheel")


def test_passwd_is_read_inside_the_rootfs_even_through_a_symlink(tmp_path: Path) -> None:
    """/etc -> /somewhere inside the image must not read the host's /somewhere."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "passwd").write_text("app:x:7:7::/:/bin/sh\n")
    (tmp_path / "etc").symlink_to("/real")
    assert resolve(str(tmp_path), "app")[:2] == (7, 7)
