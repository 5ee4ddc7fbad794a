"""The shape of targets.yaml, defined once: the pydantic models check every
entry as merged with the defaults (a mistake written under defaults: is
named there), word their errors as deployer does, and give the JSON Schema
editors read (committed as deployer/config/targets.schema.json). Imported
only when a file is loaded: pydantic costs more than the rest, and
`deploy --help` needs none of it."""

import json
import posixpath
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError

from deployer.config import names
from deployer.config.loader import merge
from deployer.config.model import (
    BUILTIN_TOKENS,
    CATCH_ALL,
    DEFAULT_PIPELINE,
    HOOK_PLACES,
    MAX_PARALLEL,
    VPN_LINGER,
    VPN_LINGER_MAX,
    YamlFloat,
    YamlInt,
    kind_of,
)
from deployer.errors import ConfigError, UsageError

# Each rule is written once, in the models below; where JSON Schema can say
# it, the schema says it too, made from the same models. Errors are in our
# words: a check raises _problem(...), and a type pydantic checks is wrapped
# in says(...), which rewords the errors of that value (not of its items).


def _problem(message: str, *below: str | int) -> Exception:
    """An error in our words; `below`: the keys under the value checked that it is about."""
    return PydanticCustomError("deployer", message, {"below": below} if below else None)


def _anchored(pattern: str) -> str:
    # pydantic and JSON Schema both search for a pattern anywhere in the text.
    return f"^(?:{pattern})$"


def _as_written_text(value: Any) -> Any:
    """A number as YAML wrote it (0640, not 416); anything else as it is."""
    return value.text if isinstance(value, (YamlInt, YamlFloat)) else value


def _non_empty(value: Any) -> str:
    return f"expected a non-empty string, got {kind_of(value)}"


def _config_name(name: str) -> None:
    if name != CATCH_ALL:
        names.config_name(name)


def _var_name(name: str) -> None:
    names.token_name(name)
    if name in BUILTIN_TOKENS:
        raise UsageError(f"{name} is set by deployer and cannot be overridden")


def _stage_name(name: str) -> None:
    if name in DEFAULT_PIPELINE:
        raise UsageError("a built-in stage has this name; use hooks to run commands before or after it")


def _host_address(address: str) -> str:
    try:
        names.hostname(address)
    except UsageError:
        if not names.is_ip(address):
            raise _problem(f"not a host name or IP address: {address!r}") from None
    return address


_MODE = r"0?[0-7]{3}"
_ACCOUNT = r"[a-z_][a-z0-9_.-]*\$?|[0-9]+"
_URL_PATH = r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*"


def _private_mode(value: Any) -> int:
    # Written as in chmod; an unquoted 0640 is read as YAML wrote it.
    text = _as_written_text(value)
    if not isinstance(text, str) or not re.fullmatch(_MODE, text):
        got = repr(text) if isinstance(text, str) else kind_of(value)
        raise _problem(f"expected an octal mode such as \"0640\", got {got}")
    mode = int(text, 8)
    if mode & ~0o660 or not mode & 0o400:
        raise _problem(f"{text}: the owner must read it, and nobody else but the group may"
                       " (no execute bits): e.g. 0600 or 0640")
    return mode


def _release_path(value: str) -> str:
    """A path inside every release: relative, plain, not one deployer keeps there."""
    norm = posixpath.normpath(value)
    problem = names.value_problem(value)
    if problem:
        raise _problem(f"{value!r} {problem}")
    if value.startswith("/") or norm == "." or norm.startswith("../") or norm == ".." or "/../" in value:
        raise _problem(f"expected a path inside the release, such as media or var/db, got {value!r}")
    if norm.split("/")[0].startswith(".deployer") or norm.split("/")[0] == ".venv":
        raise _problem(f"{value!r} is a name deployer keeps in every release")
    return norm


def _template_value(value: Any) -> str:
    """A var's value as a template gets it: numbers as written (0755 stays "0755"), one line."""
    if isinstance(value, bool) or value is None:
        raise _problem(f"{kind_of(value)} is not a value for a template; quote it")
    value = _as_written_text(value)
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise _problem(f"expected a string or a number, got {kind_of(value)}")
    problem = names.value_problem(value)
    if problem:
        raise _problem(f"value {problem}")
    return value


def _unique(stages: list[str]) -> list[str]:
    # Entry-point stages are checked when the plan is built; here only
    # duplicates (and, in TargetSpec, hooks on stages that will not run).
    for i, name in enumerate(stages):
        if name in stages[:i]:
            raise _problem(f"stage {name!r} listed twice", i)
    return stages


# The short forms: `- web1` is {address: web1}, `KEY: 1.10` is {value: "1.10"},
# `restart: ./x` is {run: ./x}, and a hook alone is a list of one.
def _host_shorthand(value: Any) -> Any:
    return {"address": value} if isinstance(value, str) else value


def _var_shorthand(value: Any) -> Any:
    if isinstance(value, (str, int, float)) or value is None:  # bool is an int
        return {"value": _template_value(value)}
    return value


def _hook_shorthand(value: Any) -> Any:
    return {"run": value} if isinstance(value, str) else value


def _one_or_more(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def says(message: Callable[[Any], str | None]) -> WrapValidator:
    """Errors of the value itself read message(value) (None: keep pydantic's);
    errors inside it (an item of a list, a key of a mapping) keep their own."""

    def reword(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as e:
            text = message(value) if all(not err["loc"] for err in e.errors()) else None
            if text is None:
                raise
            raise _problem(text) from None

    return WrapValidator(reword)


def between(low: int, high: int) -> Any:
    def reword(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return f"expected an integer from {low} to {high}, got {value}"
        return "expected an integer"

    # A plain int: getaddrinfo refuses the subclass that remembers its text.
    return Annotated[int, Field(ge=low, le=high), says(reword), AfterValidator(lambda v: int(v))]


def one_of(*choices: str) -> Any:
    def reword(value: Any) -> str:
        if isinstance(value, str) and value.strip():
            return f"expected one of {', '.join(choices)}, got {value!r}"
        return _non_empty(value)

    return Annotated[Literal[choices], says(reword)]


def checked_key(check: Callable[[str], None], schema: dict) -> Any:
    """A key that `check` accepts (it raises UsageError, as deployer.config.names does);
    `schema` says the same to an editor, from the same regex and names."""

    def validate(value: str) -> str:
        try:
            check(value)
        except UsageError as e:
            raise _problem(str(e)) from None
        return value

    return Annotated[str, AfterValidator(validate), WithJsonSchema({"type": "string", **schema})]


def matching(pattern: str) -> Any:
    return Annotated[str, Field(pattern=_anchored(pattern))]

Text = Annotated[str, Field(pattern=r"\S"), says(_non_empty)]
Texts = Annotated[list[Text], says(lambda v: f"expected a list of strings, got {kind_of(v)}")]
Flag = Annotated[bool, says(lambda v: "expected true or false")]
Seconds = Annotated[float, Field(gt=0.0), says(lambda v: "expected a positive number of seconds")]
LingerSeconds = Annotated[float, Field(ge=0.0, le=VPN_LINGER_MAX),
                          says(lambda v: f"expected seconds from 0 to {VPN_LINGER_MAX:g}")]
Port = between(1, 65535)


def host_count(low: int) -> Any:
    """A number of hosts, `low` or more, or a percentage of them from `low`% to 100%: 25%."""
    percent = r"100|[1-9][0-9]?" if low else r"100|[1-9]?[0-9]"

    def check(value: Any) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= low:
            return int(value)
        if isinstance(value, str) and re.fullmatch(rf"(?:{percent})%", value):
            return value
        raise _problem(f"expected a number of hosts ({low} or more) or a percentage of them ({low}% to 100%),"
                       f" got {value!r}" if isinstance(value, (int, str)) else
                       f"expected a number of hosts or a percentage, got {kind_of(value)}")

    return Annotated[int | str, PlainValidator(check), WithJsonSchema({"anyOf": [
        {"type": "integer", "minimum": low}, {"type": "string", "pattern": _anchored(f"(?:{percent})%")}]})]


# deployer.config.names' own regexes: the schema says what its checks check.
TargetName = checked_key(_config_name, {"pattern": _anchored(rf"\*|{names.CONFIG_NAME.pattern}")})
VarName = checked_key(_var_name, {"pattern": _anchored(names._TOKEN.pattern),
                                  "not": {"enum": list(BUILTIN_TOKENS)}})
StageName = checked_key(_stage_name, {"not": {"enum": list(DEFAULT_PIPELINE)}})
Mode = Annotated[int, BeforeValidator(_private_mode, json_schema_input_type=matching(_MODE) | int)]
Account = Annotated[
    str, Field(pattern=_anchored(_ACCOUNT)),
    says(lambda v: f"expected a user or group name or number, got {kind_of(v)}"),
    # A uid or gid may be written unquoted.
    BeforeValidator(_as_written_text, json_schema_input_type=matching(_ACCOUNT) | int),
]
UrlPath = Annotated[str, Field(pattern=_anchored(_URL_PATH)),
                    says(lambda v: f"expected a URL path such as /health, got {v!r}" if isinstance(v, str)
                          else _non_empty(v))]
ReleasePaths = Annotated[list[Annotated[Text, AfterValidator(_release_path)]],
                         says(lambda v: f"expected a list of strings, got {kind_of(v)}")]


class _Spec(BaseModel):
    # Strict: YAML already typed every value, and "22" for a port is a
    # mistake to point at, not to convert. Frozen: a spec is read, never
    # changed. Deferred: one validator, TargetsFile's, made on first use,
    # rather than one for every class here (a fifth of the models' cost).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # extra="forbid" says so too, and gives the schema its
        # additionalProperties: false; this says which keys there are.
        if isinstance(data, dict):
            for key in data:
                if not isinstance(key, str):
                    raise _problem(f"keys must be strings, got {key!r}")
                if key not in cls.model_fields:
                    raise _problem(f"unknown key; expected one of: {', '.join(sorted(cls.model_fields))}", key)
        return data


class HostSpec(_Spec):
    """A host, and what differs on it from the target's user, port and key."""

    address: Annotated[Text, AfterValidator(_host_address)] = Field(
        description="Host name or IP address, as this machine reaches it (through the VPN).")
    user: Text = Field(None, description="SSH user; default: the target's `user`.")
    port: Port = Field(None, description="SSH port; default: the target's `port`.")
    identity_file: Text | None = Field(
        None, description="SSH private key file on this machine; default: the target's `identity_file`;"
        " null for none.")


class VpnSpec(_Spec):
    """The VPN this machine opens to reach the hosts, and closes after the run."""

    kind: one_of("none", "openvpn") = Field("none", description="`none`, or `openvpn` (needs `config`).")
    config: Text = Field(
        None, description="The OpenVPN config file (.ovpn) on this machine, for kind openvpn; never packaged,"
        " nor the key files it names.")
    timeout: Seconds = Field(
        30, description="Seconds to wait for the tunnel to come up; a start of OpenVPN that exits, or has not"
        " come up within a third of this (10 s at least), is stopped and started again meanwhile.")
    linger: LingerSeconds = Field(
        VPN_LINGER, description="Seconds the tunnel stays up after the last run on this machine that uses it"
        " ends, for a next run to find it up (as ssh's ControlPersist); 0 closes it at once. The keeper"
        " closes it by itself, even if every run was killed.")

    @model_validator(mode="after")
    def _config_for_openvpn(self) -> "VpnSpec":
        if self.kind == "openvpn" and self.config is None:
            raise _problem("missing; kind openvpn needs its config file (.ovpn)", "config")
        return self


class ApacheSpec(_Spec):
    """Apache on the hosts: where the vhost goes, how it is reloaded."""

    dir: Text = Field(
        "/etc/apache2", description="Apache's configuration directory on the hosts (its sites-available/ and"
        " sites-enabled/): an absolute path, unless transport is local.")
    ctl: Text = Field(
        "apache2ctl", description="The apache2ctl command, or a command prefix such as `sudo apache2ctl`;"
        " it is given apache2ctl's own arguments (`configtest`, `graceful`, `start`, `-t -D NAME`, `-t -D"
        " DUMP_RUN_CFG`). `builtin` (transport local only) is deployer's own Apache on this machine, on"
        " 127.0.0.1, run as you.")
    port: Port = Field(
        80, description="The vhost's port: <<HTTP_PORT>> in the template, and the health check's.")
    vhost_mode: Mode = Field(
        "0640", validate_default=True, description="The vhost file's mode, as in chmod: the owner reads it,"
        " nobody else but the group may (0600, 0640, ...).")
    vhost_owner: Account | None = Field(
        None, description="The vhost file's owner (chown needs root); default: the SSH user.")
    vhost_group: Account | None = Field(None, description="The vhost file's group; default: the SSH user's.")


class PackageSpec(_Spec):
    """What goes into the release tarball."""

    source: Text = Field(".", description="The folder to package (the folder of manage.py), on this machine.")
    exclude: Texts = Field(
        [], description="Lines as in .gitignore (git's own rules): a pattern without / matches a name at any"
        " depth (*.pyc, media/), one with / a path from the source root (static/*.map), ** any depth"
        " (**/*.map).")
    include: Texts = Field(
        [], description="Exact paths packaged although the safe defaults withhold them (keys, .env files, the"
        " files targets.yaml names).")


class SharedSpec(_Spec):
    """What outlives a release (uploads, a SQLite file, a settings file with secrets): kept in
    <root>/<CONFIG_NAME>.shared/ on each host and linked into every release at the same relative path."""

    root: Text = Field(
        None, description="Where the .shared/ folders are, on the hosts; default: `deploy_root`; or storage"
        " every host mounts (NFS).")
    dirs: ReleasePaths = Field(
        [], description="Folders, relative to the release (media, var/db): made if missing.")
    files: ReleasePaths = Field(
        [], description="Files, relative to the release (local_settings.py): must be there already; deployer"
        " never writes them.")
    create: ReleasePaths = Field(
        [], description="Files, relative to the release, made empty if missing (a SQLite database: an empty file"
        " is an empty database, which migrate fills), group-writable if `group` is set; unlike `files`, deployer"
        " wrote them, so `destroy` removes them.")
    writable: ReleasePaths = Field(
        [], description="Folders the web server writes (media): as dirs, and writable for `group` all the way"
        " down: the folder setgid and group-writable, migrate and hooks run with umask 002, and what the deploy"
        " user made there before given to the group (a file it left without the group's write bit is counted,"
        " with the command that fixes it once).")
    group: Account | None = Field(
        None, description="The group of the folders it makes, group-writable (setgid), if the app writes there"
        " (www-data); needed by `writable`.")

    @model_validator(mode="after")
    def _each_path_once(self) -> "SharedSpec":
        if self.writable and not self.group:
            raise _problem("writable needs group: the web server's (www-data)", "writable")
        every = self.dirs + self.files + self.create + self.writable
        if len(set(every)) != len(every):
            raise _problem("a path is named twice")
        for a in every:
            for b in every:
                if b.startswith(a + "/"):
                    raise _problem(f"{b!r} is inside {a!r}: name only the outer one")
        return self


Status = between(100, 599)


def _statuses(value: Any) -> list[int]:
    """One HTTP status or a non-empty list of them; the error names `status` itself."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 100 <= item <= 599:
            raise _problem(f"expected an HTTP status from 100 to 599, or a list of them, got {item!r}")
    if not items:
        raise _problem("expected an HTTP status from 100 to 599, or a list of them, got an empty list")
    return [int(i) for i in items]


_HEADER_NAME = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
HeaderValue = Annotated[str, Field(pattern=_anchored(r"[\x20-\x7e]*")),
                        says(lambda v: "expected one line of printable ASCII")]


class HealthSpec(_Spec):
    """Asked of every host after the reload: GET `path` with the instance's Host header must
    answer `status` within `timeout` seconds, or every host is put back."""

    path: UrlPath = Field(description="The URL path to ask for, e.g. /health.")
    status: Annotated[list[int], BeforeValidator(_statuses, json_schema_input_type=Status | list[Status])] = Field(
        [200], description="The HTTP status it must answer, or a list of them. Any other 3xx or 4xx fails"
        " the check once it has lasted 5 s, before its timeout: waiting does not change it.")
    headers: dict[Annotated[str, Field(pattern=_anchored(_HEADER_NAME))], HeaderValue] = Field(
        {}, description="Headers sent besides Host, e.g. {X-Forwarded-Proto: https} for an app that"
        " redirects plain HTTP.")
    timeout: Seconds = Field(30, description="Seconds to wait for that answer.")
    port: Port = Field(None, description="The port to ask on; default: apache's `port`.")

    @model_validator(mode="after")
    def _host_is_the_hostname(self) -> "HealthSpec":
        for name in self.headers:
            if name.lower() in ("host", "connection"):
                raise _problem(f"deployer sets {name} itself (Host: HOSTNAME); remove it", "headers", name)
        return self


# A bucket as S3 names them (S3-compatible stores take these too), then a
# key prefix: names of characters that no URL needs to escape, none of them
# . or .. (a store that normalizes the path would read another key).
_S3_URL = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](?:/(?:[A-Za-z0-9_-][A-Za-z0-9._-]*/?)*)?"
_ENDPOINT = r"https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?/?"


def _endpoint(value: str) -> str:
    """What the pattern cannot say: a port from 1 to 65535, an IPv6 address that is one."""
    try:
        port = urlsplit(value).port
    except ValueError:
        port = 0
    if port == 0:
        raise _problem(f"expected http(s)://HOST[:PORT] with a port from 1 to 65535, got {value!r}")
    return value


class ArtifactStoreSpec(_Spec):
    """An object store of the private network (S3, or one that speaks its API): the runner puts
    the artifact there once, and every host reads it from there with a presigned URL that
    expires. Credentials come from this machine's AWS configuration (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, an instance role), never from targets.yaml."""

    url: Annotated[str, Field(pattern=_anchored(_S3_URL)),
                   says(lambda v: f"expected s3://BUCKET or s3://BUCKET/PREFIX/, got {v!r}" if isinstance(v, str)
                        else _non_empty(v))] = Field(
        description="The bucket and the key prefix of the artifacts, e.g. s3://deploys/deployer/. Each"
        " object is named by its sha256; deployer removes none: give the prefix a lifecycle rule that"
        " expires objects after a day.")
    endpoint: Annotated[str, Field(pattern=_anchored(_ENDPOINT)),
                        says(lambda v: f"expected http(s)://HOST[:PORT], got {v!r}" if isinstance(v, str)
                             else _non_empty(v)), AfterValidator(_endpoint)] | None = Field(
        None, description="The store's address, as this machine and the hosts both reach it, e.g."
        " http://10.0.0.5:8333; default: AWS's own for the region.")
    region: matching(r"[a-z0-9-]{1,32}") | None = Field(
        None, description="The region to sign for; default: the AWS configuration's, else us-east-1.")


def _commands_shorthand(value: Any) -> Any:
    return {"run": value} if isinstance(value, (str, list)) else value


class BuildSpec(_Spec):
    """Commands run on this machine, in order, before the source is hashed and packaged (collectstatic,
    an asset build): what they make goes into the release; one that fails stops the run before anything
    is opened."""

    run: Annotated[list[Text], Field(min_length=1), BeforeValidator(_one_or_more, json_schema_input_type=Text
                                                                     | list[Text]),
                   says(lambda v: "expected a command or a non-empty list of commands")] = Field(
        description="A shell command, or a list of them, run by /bin/sh in the source (or its copy).")
    copy_source: Flag = Field(
        False, description="Run them in a copy of the source (without what the safe defaults withhold), which"
        " is packaged instead; the source is left as it was.")
    timeout: Seconds = Field(1800, description="Seconds each command may run before it is stopped.")


_VERSION = r"[0-9]+\.[0-9]+\.[0-9]+"
_PLATFORM = r"manylinux_2_[0-9]+_(?:x86_64|aarch64|i686|ppc64le|s390x|armv7l)"


class PythonSpec(_Spec):
    """The app's Python packages. This machine resolves `requirements` for the hosts' interpreter and
    downloads wheels for it (with uv and pip); they travel with the release, and each host installs them
    into a virtualenv with no index access, kept by what it was built from and shared by every release
    and instance that needs the same. Migrate and hooks run with it first on PATH; <<VENV>> and <<PYTHON>>
    name it in the template."""

    requirements: Text = Field(
        description="On this machine: a requirements file (pinned or not; resolved for the hosts, and kept"
        " until the file changes), or a uv.lock.")
    version: Annotated[str, Field(pattern=_anchored(_VERSION)),
                       says(lambda v: f"expected the hosts' Python version, exactly, such as \"3.11.2\", got"
                            f" {_as_written_text(v)!r}")] = Field(
        description="The version of `interpreter` on the hosts, exactly (quoted): wheels and markers are chosen"
        " for it, and a host whose interpreter differs fails the run before anything changes.")
    interpreter: Text = Field("/usr/bin/python3", description="The Python on the hosts: an absolute path.")
    platform: Annotated[matching(_PLATFORM), says(lambda v: f"expected a manylinux wheel platform such as"
                                                   f" manylinux_2_36_x86_64, got {v!r}")] = Field(
        "manylinux_2_28_x86_64", description="The wheel platform the hosts run: manylinux_2_<glibc minor>_<arch>"
        " (Debian 12: manylinux_2_36_x86_64); wheels for it or older are chosen, and a host whose glibc is older"
        " or whose architecture differs fails the run before anything changes.")
    index_url: Text = Field(None, description="The package index; default: PyPI.")
    find_links: Texts = Field([], description="Folders (on this machine) or URLs of wheels to use as well.")
    no_index: Flag = Field(False, description="Use only `find_links`, no index.")


class VarSpec(_Spec):
    """A template token's value: written here (`value`) or read from the environment (`env`)."""

    value: Annotated[str, BeforeValidator(_template_value, json_schema_input_type=str | int | float)] = Field(
        None, description="The value: one line of text, kept as written (0755 stays 0755).")
    env: Text = Field(None, description="The environment variable to read the value from, when deploying.")
    secret: Flag = Field(False, description="Mask the value in all output.")
    export: Flag = Field(
        False, description="Also in the environment of migrate, hooks and shell stages on the hosts (read from"
        " a file only the deploy user may read, in the release: never on a command line).")

    @model_validator(mode="after")
    def _one_source(self) -> "VarSpec":
        if (self.value is None) == (self.env is None):
            raise _problem("expected exactly one of value or env")
        return self


# What migrate and hooks get from deployer (context.environment) or must
# keep from the shell: an exported var of that name would change it.
_NOT_EXPORTED = frozenset({"CONFIG_NAME", "HOSTNAME", "DEPLOY_PATH", "RELEASE", "RELEASE_PATH", "SHARED_PATH",
                           "VIRTUAL_ENV", "PATH", "IFS", "ENV", "HOME", "SHELL", "PWD", "OLDPWD", "PS4",
                           "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME"})


class FileSpec(_Spec):
    """A file of settings or secrets for the app, rendered from a template with the vars (as the vhost is)
    into every new release, or the shared folder; it begins with a comment line of deployer's (#), so the
    format must allow one (.env, Python, INI, YAML, TOML)."""

    template: Text = Field(description="The template, on this machine.")
    path: Annotated[Text, AfterValidator(_release_path)] = Field(
        description="Where it goes, relative to the release (.env, mysite/local_settings.py).")
    mode: Mode = Field(
        "0640", validate_default=True, description="Its mode, as in chmod: never readable by others (0600,"
        " 0640).")
    owner: Account | None = Field(None, description="Its owner (chown needs root); default: the SSH user.")
    group: Account | None = Field(
        None, description="Its group, e.g. the web server's (www-data) for mode 0640; default: the SSH user's.")
    shared: bool = Field(
        False, description="true: written into the instance's shared folder instead (<root>/<CONFIG_NAME>.shared/"
        "PATH), for what outlives a release (a cron job's settings), and linked into each release; every deploy"
        " writes it again (a failed one puts the previous back), a rollback's release reads the newest, and"
        " `destroy` removes it. Each host writes its own: not for a `shared: root` that every host mounts.")


class HookSpec(_Spec):
    """A shell command, run by /bin/sh in the new release."""

    run: Text = Field(description="The command.")
    on: one_of(*HOOK_PLACES) = Field(
        "all", description="Where it runs: `all` hosts, the `first` host only, or `local`: this machine.")

Hook = Annotated[HookSpec, BeforeValidator(_hook_shorthand, json_schema_input_type=Text | HookSpec)]
Hooks = Annotated[list[Hook], BeforeValidator(_one_or_more, json_schema_input_type=Hook | list[Hook])]


class HooksSpec(_Spec):
    """Commands before or after a stage of the pipeline, by stage name."""

    before: dict[str, Hooks] = Field(
        {}, description="Stage name: a command, or a list of them, run before it.")
    after: dict[str, Hooks] = Field({}, description="Stage name: a command, or a list of them, run after it.")
    first_deploy: Hooks = Field(
        [], description="Run on a host where the instance has no live release yet, before migrate (e.g."
        " createdb for a demo instance: on: first); a command, or a list. Not on: local.")
    destroy: Hooks = Field(
        [], description="Run by `deployer destroy`, once the site is no longer served and before its files go"
        " (e.g. dropdb: on: first); a command, or a list. A failure puts the site back.")

    @model_validator(mode="after")
    def _on_the_hosts(self) -> "HooksSpec":
        for key in ("first_deploy", "destroy"):
            for i, hook in enumerate(getattr(self, key)):
                if hook.on == "local":
                    raise _problem("runs on the hosts: on: all or first", key, i, "on")
        return self

HostItem = Annotated[HostSpec, BeforeValidator(_host_shorthand, json_schema_input_type=Text | HostSpec)]
Var = Annotated[VarSpec, BeforeValidator(_var_shorthand, json_schema_input_type=str | int | float | VarSpec)]


class TargetSpec(_Spec):
    """A target: where and how `deploy CONFIG_NAME HOSTNAME` deploys. Every key is optional; under
    `defaults:` they are what every target starts from. Paths on this machine may be relative to
    targets.yaml."""

    transport: one_of("ssh", "local") = Field(
        "ssh", description="`ssh`, or `local`: this machine, no SSH, no VPN.")
    hosts: Annotated[list[HostItem], Field(min_length=1),
                     says(lambda v: "expected a non-empty list of hosts")] = Field(
        None, description="The hosts, for transport ssh: each an address (host name or IP), or {address, user,"
        " port, identity_file}.")
    user: Text | None = Field(None, description="SSH user on the hosts; default: the current user.")
    port: Port = Field(22, description="SSH port of the hosts.")
    identity_file: Text | None = Field(
        None, description="SSH private key file on this machine; default: the SSH agent's and the default"
        " keys.")
    known_hosts: Text = Field(
        "~/.ssh/known_hosts", description="Host keys are checked against this file only: an unknown or changed"
        " key refuses the host.")
    connect_timeout: Seconds = Field(
        10, description="Seconds to wait for a host's SSH connection, and (from 10 to 30) for each command's"
        " session on it to open: a host that takes longer is taken as gone (a dead link answers nothing).")
    step_timeout: Seconds = Field(
        600, description="Seconds a remote command may run before it is stopped and its step fails.")
    migrate_timeout: Seconds = Field(
        3600, description="Seconds migrate may run before it is stopped and its step fails.")
    parallel: between(1, 1000) = Field(
        MAX_PARALLEL, description="Hosts at once, at most (fewer when the target has fewer).")
    batches: Annotated[list[host_count(1)], Field(min_length=1),
                       says(lambda v: f"expected a list of host counts such as [1, 25%, 100%], got {kind_of(v)}")
                       ] = Field(
        ["100%"], description="The switch to the new release and Apache's reload go over the hosts in batches,"
        " one after another, each a number of hosts or a percentage of them (rounded down, at least 1), the"
        " last repeated until every host has had its turn: [1, 25%, 100%] is the first host alone, then a"
        " quarter of them, then the rest. Every host is prepared (upload, render, configtest) before the"
        " first batch; each batch passes the health check before the next one starts.")
    batch_pause: Annotated[float, Field(ge=0.0, le=3600.0),
                           says(lambda v: "expected seconds from 0 to 3600")] = Field(
        0, description="Seconds to wait between two batches, once the first one has passed its health check.")
    max_failed: host_count(0) = Field(
        0, description="Hosts that may fail over the whole run (a number, or a percentage of the hosts, rounded"
        " down) before it stops and puts every host back. The run goes on without a host that fails within"
        " it, undoes at once what it changed there, and names it in its last lines (exit code 5). The first"
        " host, which holds the lock and runs migrate, may never fail.")
    relay: Flag = Field(
        True, description="The other hosts read the artifact from the first one: it crosses the tunnel once.")
    relay_limit: between(1, 100) = Field(
        8, description="Hosts that read the artifact from the first one at once; the others wait their turn."
        " sshd's default MaxStartups (10:30:100) drops new connections past 10 that have not logged in yet.")
    link_from_other_instances: Flag = Field(
        False, description="A new instance (no live link yet) hard-links the files it shares with the newest"
        " live release of another instance under deploy_root, as a redeploy links them from its own, instead"
        " of being sent them all: a demo beside staging deploys in a redeploy's time. Only a release deployer"
        " made, its folders the deploy user's, is linked from, and only files of the deploy user's that no"
        " one else may write and that were not changed since they were unpacked. The two instances then"
        " share those files: a hook of the new one that writes into its release in place (instead of"
        " writing a new file) changes the other's live files. Default: off.")
    artifact_store: ArtifactStoreSpec | None = Field(
        None, description="Every host reads the artifact from this object store instead, once the runner has"
        " put it there (artifacts of 1 MiB and more); the first host then serves no other. Needs `pip install"
        " 'deployer[s3]'`. Default: none.")
    keep_releases: between(2, 1000) = Field(
        5, description="Releases kept per host after a run that succeeded; the live one and the one before it"
        " are always kept.")
    protected: Flag = Field(False, description="`deployer destroy` refuses this target.")
    deploy_root: Text = Field(
        "/var/www", description="DEPLOY_PATH is <deploy_root>/<CONFIG_NAME>: an absolute path on the hosts,"
        " without white space (relative to targets.yaml only for transport local).")
    vpn: VpnSpec = Field(
        {"kind": "none"}, validate_default=True,
        description="The VPN: {kind: none}, or {kind: openvpn, config: FILE, timeout: 30, linger: 10}.")
    apache: ApacheSpec = Field({}, validate_default=True, description="Apache on the hosts.")
    migrate: Text | None = Field(
        "python manage.py migrate --noinput", description="A shell command run in the new release; null for"
        " none.")
    shared: SharedSpec = Field({}, validate_default=True, description="What outlives a release.")
    health: HealthSpec | None = Field(
        None, description="A request every host must answer after the reload; default: none.")
    package: PackageSpec = Field({}, validate_default=True, description="What goes into the release.")
    template: Text = Field("templates/default_template", description="The vhost template, on this machine.")
    build: Annotated[BuildSpec, BeforeValidator(_commands_shorthand, json_schema_input_type=Text | list[Text]
                                                | BuildSpec)] | None = Field(
        None, description="Commands run on this machine before packaging: a command, a list, or {run, copy_source,"
        " timeout}; default: none.")
    files: list[FileSpec] = Field(
        [], description="Files of settings or secrets rendered into every release: [{template, path, mode,"
        " owner, group}].")
    python: PythonSpec | None = Field(
        None, description="The app's Python packages, installed into a virtualenv on each host; default: none"
        " (the hosts' own Python and packages).")
    vars: dict[VarName, Var] = Field(
        {}, description="Template tokens, besides HOSTNAME, DEPLOY_PATH, CONFIG_NAME, HTTP_PORT"
        " (and VENV and PYTHON with `python:`):"
        " `KEY: value`, or `KEY: {env: VAR, secret: true}` to read it from the environment and mask it in all"
        " output.")
    pipeline: Annotated[list[Text], says(lambda v: f"expected a list of strings, got {kind_of(v)}"),
                        AfterValidator(_unique)] = Field(
        list(DEFAULT_PIPELINE), json_schema_extra={"uniqueItems": True},
        description="The stages, in order: built-in ones, shell stages named in `stages`, plugin stages.")
    stages: dict[StageName, Hook] = Field(
        {}, description="Shell stages to name in `pipeline`: `name: command` or {run: command, on:"
        " all|first|local}.")
    hooks: HooksSpec = Field({}, validate_default=True, description="Commands before or after a stage.")

    @model_validator(mode="after")
    def _exports_apart(self) -> "TargetSpec":
        for name, var in self.vars.items():
            if var.export and name in _NOT_EXPORTED:
                raise _problem(f"{name} is set for migrate and hooks by deployer or the shell; export another"
                               " name", "vars", name, "export")
        return self

    @model_validator(mode="after")
    def _files_apart(self) -> "TargetSpec":
        shared = self.shared.dirs + self.shared.files + self.shared.create + self.shared.writable
        seen: list[str] = []
        for i, f in enumerate(self.files):
            for other in (*shared, *seen):
                if f.path == other or f.path.startswith(other + "/") or other.startswith(f.path + "/"):
                    raise _problem(f"{f.path!r} and {other!r}: a rendered file cannot be, or be inside, a"
                                   " shared path or another file", "files", i, "path")
            seen.append(f.path)
        return self

    @model_validator(mode="after")
    def _hooks_on_stages_that_run(self) -> "TargetSpec":
        for when in ("before", "after"):
            for stage in getattr(self.hooks, when):
                if stage not in self.pipeline:
                    raise _problem("no such stage in the pipeline", "hooks", when, stage)
        return self

Entry = Annotated[TargetSpec, BeforeValidator(lambda v: {} if v is None else v,
                                              json_schema_input_type=TargetSpec | None)]


class TargetsFile(_Spec):
    """targets.yaml: the targets of `deploy CONFIG_NAME HOSTNAME`, and the defaults they share."""

    model_config = ConfigDict(title="deployer targets.yaml")

    defaults: TargetSpec = Field(
        {}, validate_default=True, description="What every target starts from: an entry overrides it key by"
        " key (mappings merge, lists and strings replace).")
    targets: Annotated[dict[TargetName, Entry], Field(min_length=1),
                       says(lambda v: "expected at least one target" if v == {} else None)] = Field(
        description="The targets by config name (a DNS label, e.g. demo-acme); the entry \"*\" is used for any"
        " config name not listed.")


class SchemaGenerator(GenerateJsonSchema):
    """The schema as editors read it: hover text from the descriptions, no
    titles made up from class and field names, and the same from every
    pydantic 2 (the committed file is compared with what this one makes)."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def default_schema(self, schema) -> dict:
        # A field that is None by default means "see the description"
        # (the target's port, deploy_root): null is no value to offer.
        if schema.get("default", ...) is None and schema["schema"]["type"] != "nullable":
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)

    def dict_schema(self, schema) -> dict:
        # The keys' pattern as propertyNames, so that a key matching none is
        # an error too (patternProperties alone would let it through).
        keys = self.generate_inner(schema["keys_schema"]) if "keys_schema" in schema else {}
        out = {"type": "object", "additionalProperties": self.generate_inner(schema["values_schema"])}
        if any(k != "type" for k in keys):
            out["propertyNames"] = {k: v for k, v in keys.items() if k != "type"}
        self.update_with_validations(out, schema, self.ValidationsMapping.object)
        return out


def validated(source: str, doc: Any, defaults: Any) -> Any:
    """`doc` checked by the models (a TargetsFile), each entry as merged with `defaults`."""
    checked = doc
    if isinstance(doc, dict):
        checked = dict(doc)
        entries = doc.get("targets")
        if isinstance(defaults, dict):
            # The defaults are checked under each entry, as merged: alone, a
            # mapping in them may lack what every entry adds to it.
            checked["defaults"] = {}
            if isinstance(entries, dict):
                checked["targets"] = {name: merge(defaults, {} if e is None else e)
                                      for name, e in entries.items()}
    try:
        return TargetsFile.model_validate(checked)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(source, _key_path(err, doc, defaults), _wording(err)) from None


def _key_path(err: dict, doc: Any, defaults: Any) -> str:
    keys = list(err["loc"])
    if keys and keys[-1] == "[key]":  # the key itself is wrong
        keys.pop()
        if err["type"] == "string_type":
            keys.pop()  # not a string: named by the mapping it is in
    if err["type"] == "deployer":
        keys += (err.get("ctx") or {}).get("below", ())
    if keys[:1] == ["targets"] and len(keys) > 1 and _from_defaults(doc["targets"][keys[1]], defaults, keys[2:]):
        keys = ["defaults", *keys[2:]]  # said where it is written
    return "/".join(str(k) for k in keys)


def _from_defaults(entry: Any, defaults: Any, keys: list) -> bool:
    """Whether the value at `keys` of an entry merged with the defaults is the defaults' alone."""
    entry = {} if entry is None else entry  # `alpha:` alone: the defaults, all of it
    for key in keys:
        if not isinstance(entry, dict) or not isinstance(defaults, dict):
            return False  # replaced by the entry's, or made from it (`- web1` is {address: web1})
        if key not in entry:
            return key in defaults
        entry, defaults = entry[key], defaults.get(key)
    return False


def _wording(err: dict) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "deployer":
        return err["msg"]
    if kind == "string_type" and err["loc"][-1:] == ("[key]",):
        return f"keys must be strings, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {kind_of(value)}"
    if kind == "missing":
        return "missing; this key is required"
    known = {"list_type": f"expected a list, got {kind_of(value)}", "string_type": _non_empty(value),
             "int_type": "expected an integer", "float_type": "expected a number",
             "bool_type": "expected true or false", "extra_forbidden": "unknown key"}
    if kind in known:
        return known[kind]
    message = err["msg"]
    return message[:1].lower() + message[1:]


def json_schema() -> dict:
    """targets.yaml's JSON Schema, from the models: what deployer/config/targets.schema.json holds.

    Draft 7, the newest that yaml-language-server (VS Code, Neovim, ...) validates with."""
    schema = TargetsFile.model_json_schema(ref_template="#/definitions/{model}",
                                                  schema_generator=SchemaGenerator)
    definitions = schema.pop("$defs")
    return {"$schema": "http://json-schema.org/draft-07/schema#", **_for_editors(schema),
            "definitions": {name: _for_editors(d, title=False) for name, d in sorted(definitions.items())}}


def _for_editors(node: Any, title: bool = True) -> Any:
    if isinstance(node, list):
        return [_for_editors(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _for_editors(v) for k, v in node.items() if title or k != "title"}
    if isinstance(node.get("description"), str):
        node["description"] = " ".join(node["description"].split())  # a docstring's lines, as one
    if "$ref" in node and len(node) > 1:
        # Draft 7 ignores whatever stands beside a $ref: the field's
        # description and default would be lost to the hover.
        node = {"allOf": [{"$ref": node.pop("$ref")}], **node}
    return node


def schema_text() -> str:
    """json_schema() as the committed file holds it."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
