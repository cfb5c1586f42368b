"""The Dockerfile language: parsing, variable substitution, and the instructions that only
change an image's config.

Parsing follows Docker's rules (moby ``buildkit/frontend/dockerfile/parser``):

* parser directives (``# escape=``` ``, ``# syntax=…``) only on the very first lines;
* a line ending in the escape character (``\\`` unless ``# escape`` says ``` ` ```)
  continues on the next one; comment lines and blank lines inside a continuation vanish;
* the keyword is case-insensitive; ``--name=value`` flags come right after it;
* RUN, CMD, ENTRYPOINT, COPY, ADD, SHELL and VOLUME take a JSON array (the *exec form*)
  or, when the text is not one, plain text (the *shell form*);
* ARGs before the first FROM are global and usable only in FROM lines.

Substitution (``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alt}``, quotes and escapes)
is what Docker's shell lexer does; it applies to ADD, COPY, ENV, EXPOSE, FROM, LABEL,
STOPSIGNAL, USER, VOLUME, WORKDIR and ARG, not to RUN, CMD or ENTRYPOINT, whose shell does
its own. The builder (``build.py``) runs FROM, RUN, COPY, ADD and ARG; every other
instruction only edits the image config, in :func:`apply_instruction`, which
``import --change`` uses too.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from minidock import parse as values
from minidock.errors import InvalidArgument, MinidockError

#: Instructions that only change the image config (and that ``import --change`` takes).
CONFIG_KEYWORDS = frozenset(
    {"CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
    | {"HEALTHCHECK", "SHELL"}
)
#: Those and the ones the builder runs itself.
KEYWORDS = CONFIG_KEYWORDS | {"FROM", "RUN", "COPY", "ADD", "ARG"}
_EXEC_FORM = frozenset(["RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "SHELL", "VOLUME"])
_FLAGS = {
    "FROM": {"platform"},
    "COPY": {"from", "chown", "chmod"},
    "ADD": {"chown", "chmod"},
    "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
}
DEFAULT_SHELL = ["/bin/sh", "-c"]
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.*?)\s*")
_FLAG = re.compile(r"--([a-zA-Z][a-zA-Z-]*)(?:=(\S*))?(?:\s+|$)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9._-]*")


class DockerfileError(MinidockError):
    """A Dockerfile that cannot be parsed or built; the message starts with ``FILE:LINE``.
    Like every failed ``docker build``, it exits 1."""

    exit_code = 1


@dataclass
class Instruction:
    keyword: str  # upper case: RUN, COPY, …
    args: str  # the text after the keyword and its flags
    flags: dict[str, str]
    exec_form: list[str] | None  # the JSON array, when given in exec form
    location: str  # "Dockerfile:12"
    text: str  # as written, continuation lines joined
    escape: str = "\\"

    def fail(self, message: str) -> DockerfileError:
        return DockerfileError(f"{self.location}: {message}")

    def words(self, env: Mapping[str, str]) -> list[str]:
        """The arguments: the exec form's array, or the shell form split into words with
        variables substituted (ADD, COPY, EXPOSE, VOLUME)."""
        if self.exec_form is not None:
            return [self.expand(w, env) for w in self.exec_form]
        try:
            return split_words(self.args, env, self.escape)
        except ValueError as exc:
            raise self.fail(f"{self.keyword}: {exc}") from None

    def expand(self, text: str, env: Mapping[str, str]) -> str:
        try:
            return expand(text, env, self.escape)
        except ValueError as exc:
            raise self.fail(f"{self.keyword}: {exc}") from None


@dataclass
class Stage:
    index: int
    name: str | None  # from ``FROM image AS name``, lower case
    base: str  # the image, ``scratch`` or an earlier stage (ARGs not yet substituted)
    origin: Instruction  # the FROM line
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: str
    global_args: list[Instruction]  # ARGs before the first FROM
    stages: list[Stage]


# --- parsing -----------------------------------------------------------------------------------
def _json_array(text: str) -> list[str] | None:
    """The exec form: a JSON array of strings, else None (then it is the shell form)."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def parse_instruction(text: str, location: str, escape: str = "\\") -> Instruction:
    """One logical line (continuations already joined) into an :class:`Instruction`."""
    match = re.match(r"\s*(\S+)\s*(.*)", text, re.DOTALL)
    assert match is not None  # the caller never passes a blank line
    word, rest = match.group(1), match.group(2).strip()
    keyword = word.upper()
    if keyword not in KEYWORDS:
        raise DockerfileError(f"{location}: unknown instruction: {word}")
    flags: dict[str, str] = {}
    while keyword in _FLAGS and (flag := _FLAG.match(rest)):
        name, value = flag.group(1).lower(), flag.group(2)
        if name not in _FLAGS[keyword]:
            raise DockerfileError(f"{location}: {keyword}: unknown flag: --{name}")
        if not value:
            raise DockerfileError(f"{location}: {keyword}: --{name} needs a value (--{name}=…)")
        flags[name] = value
        rest = rest[flag.end() :]
    if keyword not in _FLAGS and (flag := _FLAG.match(rest)):
        raise DockerfileError(f"{location}: {keyword}: --{flag.group(1)} is not supported")
    inst = Instruction(
        keyword=keyword,
        args=rest,
        flags=flags,
        exec_form=_json_array(rest) if keyword in _EXEC_FORM else None,
        location=location,
        text=text.strip(),
        escape=escape,
    )
    _check_arguments(inst)
    return inst


def _check_arguments(inst: Instruction) -> None:
    """The checks Docker's parser makes before anything runs: argument counts, forms."""
    k, args = inst.keyword, inst.args
    count = len(inst.exec_form) if inst.exec_form is not None else len(args.split())
    if k in ("COPY", "ADD") and count < 2:
        raise inst.fail(f"{k} requires at least two arguments, but got {count}")
    if k == "FROM" and not (count == 1 or (count == 3 and args.split()[1].upper() == "AS")):
        raise inst.fail("FROM requires either one or three arguments (FROM image [AS name])")
    if k == "SHELL" and (inst.exec_form is None or not inst.exec_form):
        raise inst.fail('SHELL requires the arguments to be in JSON form: SHELL ["sh", "-c"]')
    if k == "HEALTHCHECK" and args.split()[0:1] not in (["NONE"], ["CMD"]):
        raise inst.fail("HEALTHCHECK takes NONE or CMD followed by a command")
    if k not in ("CMD", "ENTRYPOINT") and count == 0:
        raise inst.fail(f"{k} requires at least one argument")


def parse(text: str, path: str = "Dockerfile") -> Dockerfile:
    """Parse a whole Dockerfile. Errors name ``path``, the line and the instruction."""
    lines = text.splitlines()
    escape = "\\"
    first = 0
    while first < len(lines) and (directive := _DIRECTIVE.fullmatch(lines[first])):
        key, value = directive.group(1).lower(), directive.group(2)
        if key == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(f"{path}:{first + 1}: invalid escape token {value!r}")
            escape = value
        first += 1
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    current: str | None = None
    start = 0
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(lines[first:], start=first + 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if current is None:
            current, start = "", number
        if line.rstrip().endswith(escape):
            current += line.rstrip()[:-1]
            continue
        logical.append((start, current + line))
        current = None
    if current is not None and current.strip():
        logical.append((start, current))
    for number, line in logical:
        inst = parse_instruction(line, f"{path}:{number}", escape)
        if inst.keyword == "FROM":
            words = inst.args.split()
            name = words[2].lower() if len(words) == 3 else None
            if name is not None and not _STAGE_NAME.fullmatch(name):
                raise inst.fail(f"FROM: invalid stage name {words[2]!r}")
            if name is not None and any(s.name == name for s in stages):
                raise inst.fail(f"FROM: duplicate stage name {name!r}")
            stages.append(Stage(len(stages), name, words[0], inst))
        elif stages:
            stages[-1].instructions.append(inst)
        elif inst.keyword == "ARG":
            global_args.append(inst)
        else:
            raise inst.fail(f"{inst.keyword} before FROM: no build stage in current context")
    if not stages:
        raise DockerfileError(f"{path}: no FROM instruction: nothing to build")
    return Dockerfile(path, global_args, stages)


# --- substitution ------------------------------------------------------------------------------
def _lex(text: str, env: Mapping[str, str], escape: str, split: bool) -> list[str]:
    """Docker's shell lexer: quotes, escapes and ``$`` substitution; with ``split``,
    unquoted whitespace separates words. Raises ValueError on bad syntax."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    i = 0
    while i < len(text):
        ch = text[i]
        if split and ch in " \t\r\n":
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            i += 1
            continue
        in_word = True
        if ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("unterminated single-quoted string")
            word.append(text[i + 1 : end])
            i = end + 1
        elif ch == '"':
            i = _double_quoted(text, i + 1, env, escape, word)
        elif ch == escape:
            word.append(text[i + 1 : i + 2])
            i += 2
        elif ch == "$":
            i = _dollar(text, i, env, escape, word)
        else:
            word.append(ch)
            i += 1
    if in_word:
        words.append("".join(word))
    return words


def _double_quoted(text: str, i: int, env: Mapping[str, str], escape: str, out: list) -> int:
    """Inside ``"…"``: ``$`` substitutes; the escape character escapes only ``"``, ``$``
    and itself. Returns the index after the closing quote."""
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return i + 1
        if ch == escape and text[i + 1 : i + 2] in ('"', "$", escape):
            out.append(text[i + 1])
            i += 2
        elif ch == "$":
            i = _dollar(text, i, env, escape, out)
        else:
            out.append(ch)
            i += 1
    raise ValueError("unterminated double-quoted string")


def _dollar(text: str, i: int, env: Mapping[str, str], escape: str, out: list) -> int:
    """``$NAME``, ``${NAME}``, ``${NAME:-word}``, ``${NAME-word}``, ``${NAME:+word}``,
    ``${NAME+word}`` at ``text[i] == "$"``. Returns the index after it."""
    if text[i + 1 : i + 2] != "{":
        name = _NAME.match(text, i + 1)
        if name is None:
            out.append("$")
            return i + 1
        out.append(env.get(name.group(), ""))
        return name.end()
    name = _NAME.match(text, i + 2)
    if name is None:
        raise ValueError(f"bad substitution in {text[i:]!r}")
    j, depth = name.end(), 1
    end = j
    while end < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        end += 1
    if depth:
        raise ValueError(f"missing '}}' in {text[i:]!r}")
    modifier = text[j : end - 1]
    value = env.get(name.group())
    if not modifier:
        out.append(value or "")
    elif match := re.fullmatch(r"(:?)([-+])(.*)", modifier, re.DOTALL):
        colon, op, word = match.groups()
        is_set = value is not None and (value != "" or not colon)
        if op == "-":
            out.append(value if is_set else expand(word, env, escape))  # type: ignore[arg-type]
        else:
            out.append(expand(word, env, escape) if is_set else "")
    else:
        raise ValueError(f"unsupported modifier in {text[i:end]!r}")
    return end


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Substitute variables and remove quotes, keeping whitespace (one word)."""
    return "".join(_lex(text, env, escape, split=False))


def split_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Split on unquoted whitespace, substituting variables and removing quotes."""
    return _lex(text, env, escape, split=True)


# --- instructions that change the image config -------------------------------------------------
def env_of(config: dict) -> dict[str, str]:
    """An image config's ``Env`` list as a dict (later entries win)."""
    return dict(e.partition("=")[::2] for e in config.get("Env") or [])


def pairs(inst: Instruction, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """``KEY=VALUE …`` (ENV, LABEL), or the legacy ``KEY VALUE WITH SPACES``. Every value
    is substituted with the variables as they were *before* this instruction."""
    words = inst.words(env)
    if "=" not in words[0]:
        key, *value = re.split(r"\s+", inst.args, maxsplit=1)
        if not value:
            raise inst.fail(f"{inst.keyword} {key}: needs a value ({inst.keyword} KEY=VALUE)")
        return [(inst.expand(key, env), inst.expand(value[0], env))]
    result = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise inst.fail(f"{inst.keyword}: {word!r} is not KEY=VALUE")
        result.append((key, value))
    return result


def arg_declarations(inst: Instruction, env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``ARG NAME[=default] …``: the names, with their defaults (None when there is none)."""
    declared: list[tuple[str, str | None]] = []
    for word in inst.words(env):
        name, sep, default = word.partition("=")
        if not _NAME.fullmatch(name):
            raise inst.fail(f"ARG: invalid name {name!r}")
        declared.append((name, default if sep else None))
    return declared


def command(inst: Instruction, config: dict) -> list[str]:
    """RUN, CMD and ENTRYPOINT: the exec form as is; the shell form through the image's
    shell (SHELL, ``/bin/sh -c`` by default)."""
    if inst.exec_form is not None:
        return list(inst.exec_form)
    return [*(config.get("Shell") or DEFAULT_SHELL), inst.args]


def _ports(inst: Instruction, env: Mapping[str, str]) -> list[str]:
    """EXPOSE ``80``, ``80/tcp``, ``53/udp``, ``8000-8002``: as ``port/proto`` keys."""
    ports = []
    for word in inst.words(env):
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?(?:/(tcp|udp|sctp))?", word.lower())
        if match is None:
            raise inst.fail(f"EXPOSE: invalid port {word!r}")
        low, high, proto = match.groups()
        if not 0 < int(low) <= int(high or low) <= 65535:
            raise inst.fail(f"EXPOSE: invalid port range {word!r}")
        ports += [f"{p}/{proto or 'tcp'}" for p in range(int(low), int(high or low) + 1)]
    return ports


def _healthcheck(inst: Instruction) -> dict:
    """HEALTHCHECK NONE, or ``[--interval=…] CMD command`` (durations in nanoseconds)."""
    kind, _, rest = inst.args.partition(" ")
    if kind.upper() == "NONE":
        if rest.strip() or inst.flags:
            raise inst.fail("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    rest = rest.strip()
    if not rest:
        raise inst.fail("HEALTHCHECK CMD needs a command")
    exec_form = _json_array(rest)
    check: dict = {"Test": ["CMD", *exec_form] if exec_form is not None else ["CMD-SHELL", rest]}
    for flag, key in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ):
        if flag in inst.flags:
            value = inst.flags[flag]
            if not re.fullmatch(values._DURATION, value) or values._duration_ns(value) < 0:
                raise inst.fail(f"HEALTHCHECK: --{flag}={value} is not a duration like 30s")
            check[key] = values._duration_ns(value)
    if "retries" in inst.flags:
        if not inst.flags["retries"].isdigit():
            raise inst.fail(f"HEALTHCHECK: --retries={inst.flags['retries']} is not a number")
        check["Retries"] = int(inst.flags["retries"])
    return check


def apply_instruction(
    config: dict, inst: Instruction, env: Mapping[str, str], cmd_set: bool
) -> None:
    """Apply a config-only instruction (see ``CONFIG_KEYWORDS``) to an image config's
    ``config`` section. ``env`` is what ``$VAR`` means here (the image's ENV and the
    ARGs in scope); ``cmd_set`` tells whether this stage set CMD already: ENTRYPOINT
    resets an inherited CMD (Docker's rule), not one given before it."""
    k = inst.keyword
    if k == "CMD":
        config["Cmd"] = command(inst, config)
    elif k == "ENTRYPOINT":
        config["Entrypoint"] = command(inst, config)
        if not cmd_set:
            config["Cmd"] = None
    elif k == "ENV":
        current = env_of(config)
        current.update(pairs(inst, env))
        config["Env"] = [f"{key}={value}" for key, value in current.items()]
    elif k == "LABEL":
        config["Labels"] = {**(config.get("Labels") or {}), **dict(pairs(inst, env))}
    elif k == "EXPOSE":
        config["ExposedPorts"] = {
            **(config.get("ExposedPorts") or {}),
            **{p: {} for p in _ports(inst, env)},
        }
    elif k == "VOLUME":
        config["Volumes"] = {**(config.get("Volumes") or {}), **{v: {} for v in inst.words(env)}}
    elif k == "USER":
        config["User"] = inst.expand(inst.args, env)
    elif k == "WORKDIR":
        where = inst.expand(inst.args, env)
        config["WorkingDir"] = posixpath.normpath(
            posixpath.join(config.get("WorkingDir") or "/", where)
        )
    elif k == "STOPSIGNAL":
        name = inst.expand(inst.args, env)
        try:
            values.parse_signal(name)
        except InvalidArgument as exc:
            raise inst.fail(f"STOPSIGNAL: {exc}") from None
        config["StopSignal"] = name
    elif k == "SHELL":
        config["Shell"] = list(inst.exec_form or [])
    elif k == "HEALTHCHECK":
        config["Healthcheck"] = _healthcheck(inst)
    else:
        raise inst.fail(f"{k} does not only change the image config")


def apply_changes(config: dict, changes: list[str]) -> dict:
    """``import --change 'CMD ["sh"]'``: apply each instruction to ``config``; return it."""
    cmd_set = False
    for n, change in enumerate(changes, start=1):
        if not change.strip():
            continue
        inst = parse_instruction(change, f"--change {n}")
        if inst.keyword not in CONFIG_KEYWORDS:
            raise InvalidArgument(f"unsupported --change instruction: {inst.keyword}")
        apply_instruction(config, inst, env_of(config), cmd_set)
        cmd_set = cmd_set or inst.keyword == "CMD"
    return config
