"""The Dockerfile parser, variable substitution, config-only instructions and
.dockerignore — pure functions, checked against what Docker does."""

from __future__ import annotations

import pytest

from minidock import dockerfile
from minidock.build import DockerIgnore
from minidock.dockerfile import DockerfileError, apply_changes, expand, parse, split_words


def only_stage(text: str) -> dockerfile.Stage:
    parsed = parse(text)
    assert len(parsed.stages) == 1
    return parsed.stages[0]


# --- structure ---------------------------------------------------------------------------------
def test_continuations_join_lines_and_drop_comments_inside_them() -> None:
    stage = only_stage(
        "FROM busybox\n"
        "RUN echo one \\\n"
        "    # a comment inside the continuation\n"
        "\n"
        "    && echo two\n"
        'CMD ["sh"]\n'
    )
    run, cmd = stage.instructions
    assert run.keyword == "RUN"
    assert run.args == "echo one     && echo two"
    assert run.location == "Dockerfile:2"
    assert cmd.location == "Dockerfile:6"


def test_comments_blank_lines_and_case_insensitive_keywords() -> None:
    stage = only_stage("# comment\n\n  # indented comment\nfrom busybox as Base\nrun true\n")
    assert stage.name == "base"
    assert stage.base == "busybox"
    assert stage.instructions[0].keyword == "RUN"


def test_escape_directive_switches_to_backtick() -> None:
    stage = only_stage("# escape=`\nFROM busybox\nRUN echo a `\n  b\nWORKDIR C:\\dir\n")
    run, workdir = stage.instructions
    assert run.args == "echo a   b"
    assert expand(workdir.args, {}, workdir.escape) == "C:\\dir"


def test_directive_is_only_a_directive_on_the_first_lines() -> None:
    stage = only_stage("FROM busybox\n# escape=`\nRUN echo a \\\n b\n")
    assert stage.instructions[0].args == "echo a  b"


def test_exec_form_and_shell_form() -> None:
    stage = only_stage(
        'FROM busybox\nCMD ["echo", "a b"]\nCMD echo "a b"\nENTRYPOINT [not json\nRUN ["sh", 1]\n'
    )
    exec_cmd, shell_cmd, bad_json, not_strings = stage.instructions
    assert exec_cmd.exec_form == ["echo", "a b"]
    assert shell_cmd.exec_form is None
    assert bad_json.exec_form is None  # Docker falls back to the shell form
    assert not_strings.exec_form is None
    config: dict = {}
    assert dockerfile.command(exec_cmd, config) == ["echo", "a b"]
    assert dockerfile.command(shell_cmd, config) == ["/bin/sh", "-c", 'echo "a b"']
    config["Shell"] = ["/bin/bash", "-xc"]
    assert dockerfile.command(shell_cmd, config) == ["/bin/bash", "-xc", 'echo "a b"']


def test_flags() -> None:
    stage = only_stage("FROM busybox\nCOPY --from=build --chown=web:web /a /b\n")
    assert stage.instructions[0].flags == {"from": "build", "chown": "web:web"}
    assert stage.instructions[0].args == "/a /b"


def test_stages_and_global_args() -> None:
    parsed = parse("ARG BASE=busybox\nFROM $BASE AS build\nRUN true\nFROM build\nRUN true\n")
    assert [a.args for a in parsed.global_args] == ["BASE=busybox"]
    assert [(s.index, s.name, s.base) for s in parsed.stages] == [
        (0, "build", "$BASE"),
        (1, None, "build"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM busybox\nRUN true\nFORM x\n", "Dockerfile:3: unknown instruction: FORM"),
        ("FROM busybox\n\nCOPY onlyone\n", "Dockerfile:3: COPY requires at least two arguments"),
        ("ENV A=1\nFROM busybox\n", "Dockerfile:1: ENV before FROM"),
        ("FROM a b\n", "Dockerfile:1: FROM requires either one or three arguments"),
        ("FROM busybox\nRUN --mount=type=cache true\n", "Dockerfile:2: RUN: --mount is not"),
        ("FROM busybox\nCOPY --chmod a b\n", "Dockerfile:2: COPY: --chmod needs a value"),
        ("FROM busybox\nCOPY --nope=1 a b\n", "Dockerfile:2: COPY: unknown flag: --nope"),
        ("FROM busybox\nSHELL sh -c\n", "Dockerfile:2: SHELL requires the arguments"),
        ("FROM a AS x\nFROM b AS X\n", "Dockerfile:2: FROM: duplicate stage name 'x'"),
        ("# just a comment\n", "Dockerfile: no FROM instruction"),
        ("FROM busybox\nHEALTHCHECK --interval=1s\n", "Dockerfile:2: HEALTHCHECK takes NONE or"),
    ],
)
def test_syntax_errors_name_the_file_line_and_instruction(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        parse(text)
    assert str(caught.value).startswith(message)


def test_error_names_the_path_given() -> None:
    with pytest.raises(DockerfileError, match=r"^ctx/Dockerfile\.dev:2: unknown instruction"):
        parse("FROM busybox\nBOGUS\n", "ctx/Dockerfile.dev")


# --- substitution ------------------------------------------------------------------------------
ENV = {"NAME": "world", "EMPTY": "", "SPACED": "a b"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello $NAME", "hello world"),
        ("${NAME}s", "worlds"),
        ("$UNSET.", "."),
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY-fallback}", ""),
        ("${UNSET-fallback}", "fallback"),
        ("${NAME:+set}", "set"),
        ("${EMPTY:+set}", ""),
        ("${EMPTY+set}", "set"),
        ("${UNSET:-$NAME}", "world"),
        ("'$NAME'", "$NAME"),
        ('"$NAME"', "world"),
        ("\\$NAME", "$NAME"),
        ('"a \\"quoted\\" \\$NAME"', 'a "quoted" $NAME'),
        ("cost $5", "cost $5"),
        ("a\\ b", "a b"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, ENV) == expected


def test_split_words_keeps_quoted_spaces_and_substituted_values() -> None:
    assert split_words("a \"b c\" d='e f' $SPACED", ENV) == ["a", "b c", "d=e f", "a b"]


@pytest.mark.parametrize("text", ['"open', "'open", "${NAME", "${NAME:?err}", "${}"])
def test_bad_substitution_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        expand(text, ENV)


def test_substitution_error_in_an_instruction_names_its_line() -> None:
    stage = only_stage('FROM busybox\nENV A="unterminated\n')
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: ENV: unterminated"):
        dockerfile.apply_instruction({}, stage.instructions[0], {}, False)


# --- config-only instructions ------------------------------------------------------------------
def apply(config: dict, *lines: str, env: dict | None = None) -> dict:
    stage = only_stage("FROM busybox\n" + "\n".join(lines) + "\n")
    cmd_set = False
    for inst in stage.instructions:
        dockerfile.apply_instruction(
            config, inst, {**(env or {}), **dockerfile.env_of(config)}, cmd_set
        )
        cmd_set = cmd_set or inst.keyword == "CMD"
    return config


def test_env_forms_and_values_from_before_the_instruction() -> None:
    config = apply({"Env": ["PATH=/bin", "A=old"]}, 'ENV A=new B=$A C="x y"', "ENV D $A and $B")
    assert config["Env"] == ["PATH=/bin", "A=new", "B=old", "C=x y", "D=new and old"]


def test_arg_values_substitute_but_env_wins() -> None:
    config = apply({"Env": ["V=env"]}, "LABEL a=$V b=$ONLYARG", env={"V": "arg", "ONLYARG": "x"})
    assert config["Labels"] == {"a": "env", "b": "x"}


def test_entrypoint_resets_an_inherited_cmd_but_not_one_set_in_this_stage() -> None:
    inherited = apply({"Cmd": ["sh"]}, 'ENTRYPOINT ["httpd"]')
    assert inherited["Entrypoint"] == ["httpd"]
    assert inherited["Cmd"] is None
    same_stage = apply({}, 'CMD ["-f"]', "ENTRYPOINT httpd")
    assert same_stage["Entrypoint"] == ["/bin/sh", "-c", "httpd"]
    assert same_stage["Cmd"] == ["-f"]


def test_workdir_is_relative_to_the_previous_one() -> None:
    config = apply({}, "WORKDIR /app", "WORKDIR src", "WORKDIR ../lib/$NAME", env={"NAME": "x"})
    assert config["WorkingDir"] == "/app/lib/x"


def test_expose_user_volume_stopsignal_label() -> None:
    config = apply(
        {},
        "EXPOSE 80 53/udp 8000-8002",
        "USER web:staff",
        'VOLUME ["/data", "/logs"]',
        "STOPSIGNAL SIGQUIT",
        'LABEL "org.example.name"="A B" version=1',
    )
    assert config["ExposedPorts"] == {
        "80/tcp": {},
        "53/udp": {},
        "8000/tcp": {},
        "8001/tcp": {},
        "8002/tcp": {},
    }
    assert config["User"] == "web:staff"
    assert config["Volumes"] == {"/data": {}, "/logs": {}}
    assert config["StopSignal"] == "SIGQUIT"
    assert config["Labels"] == {"org.example.name": "A B", "version": "1"}


def test_healthcheck() -> None:
    config = apply(
        {},
        "HEALTHCHECK --interval=5s --timeout=1m30s --retries=2 CMD wget -q -O- localhost",
    )
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q -O- localhost"],
        "Interval": 5_000_000_000,
        "Timeout": 90_000_000_000,
        "Retries": 2,
    }
    assert apply({}, 'HEALTHCHECK CMD ["true"]')["Healthcheck"] == {"Test": ["CMD", "true"]}
    assert apply({}, "HEALTHCHECK NONE")["Healthcheck"] == {"Test": ["NONE"]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("EXPOSE 80/xyz", "EXPOSE: invalid port"),
        ("EXPOSE 70000", "EXPOSE: invalid port range"),
        ("STOPSIGNAL SIGNOPE", "STOPSIGNAL: invalid signal"),
        ("HEALTHCHECK --interval=soon CMD true", "not a duration"),
        ("ENV ONLYKEY", "ENV ONLYKEY: needs a value"),
        ("LABEL =x", "is not KEY=VALUE"),
    ],
)
def test_bad_values_name_the_line(line: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=rf"^Dockerfile:2: .*{message}"):
        apply({}, line)


def test_import_changes_use_the_same_instructions() -> None:
    config = apply_changes(
        {"Env": ["PATH=/bin"]}, ['CMD ["sh"]', "ENV GREETING=hi", "WORKDIR /tmp", "EXPOSE 80"]
    )
    assert config == {
        "Env": ["PATH=/bin", "GREETING=hi"],
        "Cmd": ["sh"],
        "WorkingDir": "/tmp",
        "ExposedPorts": {"80/tcp": {}},
    }
    with pytest.raises(Exception, match="unsupported --change instruction: RUN"):
        apply_changes({}, ["RUN true"])


# --- .dockerignore -----------------------------------------------------------------------------
def test_dockerignore_patterns() -> None:
    ignore = DockerIgnore(
        ["# comment", "", "*.log", "build/", "**/tmp", "!keep.log", "docs/**/*.md", "/abs"]
    )
    assert ignore("a.log")
    assert not ignore("keep.log")  # the last matching pattern wins
    assert not ignore("sub/a.log")  # * does not cross directories
    assert ignore("build/x/y.o")  # a parent matched
    assert ignore("tmp") and ignore("a/b/tmp/c")
    assert ignore("docs/x.md") and ignore("docs/a/b/x.md")
    assert not ignore("docs/x.txt")
    assert ignore("abs")
    assert not ignore("src/main.c")
