"""Who we are to a registry: stored credentials, and the answer to a registry's challenge.

Credentials live where Docker keeps them, so ``docker login`` and ``minidock login`` share
them: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, as
``{"auths": {"host:port": {"auth": base64("user:password")}}}``. The file is written
atomically with mode 0600; keys other than ``auths`` (``credsStore``, ``proxies``…) are kept
as they are, though credential helpers are not run.

A registry says how to authenticate in a 401 response's ``WWW-Authenticate`` header
(RFC 7235). ``Basic`` asks for the user name and password on every request. ``Bearer
realm=…,service=…,scope=…`` (the distribution spec's token flow) sends the client to a
token server: GET the realm with ``service`` and ``scope`` (HTTP Basic with the stored
credentials, or anonymously), take the ``token`` from its JSON, and retry the request with
``Authorization: Bearer <token>``. :class:`RegistryAuth` does that inside httpx.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Generator
from dataclasses import dataclass

import httpx

from minidock import store
from minidock.errors import InvalidArgument

#: One ``key=value`` or ``key="quoted, value"`` parameter of a challenge.
_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        """The value of an ``Authorization: Basic`` header."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """Parse one ``WWW-Authenticate`` challenge: ``Bearer realm="…",service="…"``.
    Registries send a single challenge, so a header listing several is not split."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for match in _PARAM.finditer(rest):
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
    return Challenge(scheme.lower(), params)


class RegistryAuth(httpx.Auth):
    """httpx's hook for authenticating to a registry: send the request, and if the answer
    is 401, answer the challenge and send it again. The answer is remembered, so later
    requests carry it from the start and only the first one of an operation is sent twice.

    ``scopes`` are what the operation needs (``repository:demo/web:pull,push``); a Bearer
    token is asked for them all at once, with any scope the challenge names."""

    def __init__(self, credentials: Credentials | None, scopes: list[str]) -> None:
        self.credentials = credentials
        self.scopes = scopes
        self.header: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.header is not None:
            request.headers["Authorization"] = self.header
        response = yield request
        if response.status_code != 401 or "WWW-Authenticate" not in response.headers:
            return
        challenge = parse_challenge(response.headers["WWW-Authenticate"])
        if challenge.scheme == "basic" and self.credentials is not None:
            self.header = self.credentials.basic()
        elif challenge.scheme == "bearer" and "realm" in challenge.params:
            token_response = yield self._token_request(challenge)
            token_response.read()
            if token_response.status_code != 200:
                return  # wrong credentials: the caller sees the first 401
            body = token_response.json()
            self.header = f"Bearer {body.get('token') or body.get('access_token')}"
        else:
            return  # Basic without credentials, or a scheme we do not speak
        request.headers["Authorization"] = self.header
        yield request

    def _token_request(self, challenge: Challenge) -> httpx.Request:
        """GET realm?service=…&scope=…&scope=… (``account`` names the user, as Docker does)."""
        scopes = dict.fromkeys([*self.scopes, *challenge.params.get("scope", "").split()])
        params = [("scope", s) for s in scopes if s]
        if "service" in challenge.params:
            params.insert(0, ("service", challenge.params["service"]))
        headers = {}
        if self.credentials is not None:
            params.append(("account", self.credentials.username))
            headers["Authorization"] = self.credentials.basic()
        return httpx.Request("GET", challenge.params["realm"], params=params, headers=headers)


# --- config.json ---------------------------------------------------------------------------------
def config_path() -> str:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(directory, "config.json")


def registry_key(registry: str) -> str:
    """The ``auths`` key for a registry: its ``host[:port]``, however it was written
    (Docker's older keys look like ``https://host/v1/``)."""
    host = re.sub(r"^[a-z]+://", "", registry.strip()).split("/")[0]
    if not host:
        raise InvalidArgument(f"invalid registry address {registry!r}")
    return host


def _read_config(path: str) -> dict:
    try:
        config = store.read_json(path)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise InvalidArgument(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"{path}: expected a JSON object")
    return config


def credentials_for(registry: str) -> Credentials | None:
    """The credentials stored for ``registry``, if any."""
    path = config_path()
    for key, entry in _read_config(path).get("auths", {}).items():
        if registry_key(key) == registry_key(registry) and entry.get("auth"):
            try:
                username, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise InvalidArgument(f"{path}: the auth entry for {key} is not base64 user:pass")
            return Credentials(username, password)
    return None


def save_credentials(registry: str, credentials: Credentials) -> str:
    """Store the credentials for ``registry`` (replacing any); return the file's path."""
    path = config_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with store.locked(f"{path}.lock"):
        config = _read_config(path)
        auths = config.setdefault("auths", {})
        for key in [k for k in auths if registry_key(k) == registry_key(registry)]:
            del auths[key]
        auths[registry_key(registry)] = {"auth": credentials.basic().removeprefix("Basic ")}
        store.write_json(path, config, mode=0o600)
    return path


def remove_credentials(registry: str) -> bool:
    """Forget the credentials for ``registry``; False when there were none."""
    path = config_path()
    if not os.path.exists(path):
        return False
    with store.locked(f"{path}.lock"):
        config = _read_config(path)
        auths = config.get("auths", {})
        keys = [k for k in auths if registry_key(k) == registry_key(registry)]
        for key in keys:
            del auths[key]
        if keys:
            store.write_json(path, config, mode=0o600)
    return bool(keys)
