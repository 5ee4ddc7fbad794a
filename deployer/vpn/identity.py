"""Which tunnel a VPN config is: the servers it connects to and the client
certificate it connects with (tunnel_key), read bounded and parsed in one
pass, so two checkouts whose copies differ by a comment share one tunnel."""

import base64
import hashlib
import json
import os
import re
import stat

from deployer.errors import StepFailed

_FILE_LIMIT = 1024 * 1024
# The first of these the config has is the client's identity (the last
# `cert` of a config counts, as in OpenVPN).
_IDENTITY = ("cert", "pkcs12", "key")
_SPACE = re.compile(r"[ \t\v\f\r]+")


def tunnel_key(config: str) -> str:
    """16 hex digits: equal for two configs that make OpenVPN connect with the
    same certificate to the same servers, different for different certificates."""
    options = list(_options(_read_bounded(config, "the VPN config").decode("utf-8", "surrogateescape")))
    folder = _folder(options, os.path.dirname(config))
    last = {words[0]: (words, inline) for words, inline in options if len(words) > 1}
    identity = next((_identity(last[name], folder) for name in _IDENTITY if name in last), None)
    if identity is not None:
        material = {"remotes": _remotes(options), "identity": identity}
    else:
        userpass = last.get("auth-user-pass")
        material = {"options": options, "auth-user-pass": userpass and _file_identity(userpass, folder)}
    # A config it includes may hold either: its bytes count whole.
    material["config"] = [_file_identity(option, folder) for option in options if option[0][0] == "config"]
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def udp_only(config: str) -> bool:
    """Whether every server the config may connect to is a UDP one (False
    for a config that cannot be read: OpenVPN will say why)."""
    try:
        options = list(_options(_read_bounded(config, "the VPN config").decode("utf-8", "surrogateescape")))
    except (OSError, StepFailed):
        return False
    remotes = _remotes(options)
    return bool(remotes) and all(proto == "udp" for _, _, proto in remotes)


def _read_bounded(path: str, what: str) -> bytes:
    """A user's file, at most _FILE_LIMIT bytes: a bigger one, or one that is
    not a regular file (a FIFO would block), fails, naming it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StepFailed(f"{what} {path} is not a regular file")
        chunks, size = [], 0
        while size <= _FILE_LIMIT and (chunk := os.read(fd, _FILE_LIMIT + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > _FILE_LIMIT:
        raise StepFailed(f"{what} {path} is over 1 MiB: deployer reads no more of it (an OpenVPN config and"
                         " its certificates take a few KiB)")
    return b"".join(chunks)


def _options(text: str):
    """(words, inline) per option, as OpenVPN reads a config: comments and
    blank lines are none, `--name` is `name`, and an inline block
    `<name>`...`</name>` is the option `name` with its content (lines
    stripped, blank ones dropped) as its one argument."""
    lines = iter(text.split("\n"))
    for line in lines:
        words = _words(line)
        if not words:
            continue
        if words[0].startswith("--"):
            words[0] = words[0][2:]
        if len(words) == 1 and len(words[0]) > 2 and words[0][0] == "<" and words[0][-1] == ">":
            name = words[0][1:-1]
            close, body = f"</{name}>", []
            for inner in lines:
                if inner.lstrip().startswith(close):
                    break
                if inner.strip():
                    body.append(inner.strip())
            yield (name, "\n".join(body)), True
        else:
            yield tuple(words), False


def _words(line: str) -> list[str]:
    """A line's words as OpenVPN splits them: a word that starts with # or ;
    starts a comment; "double" and 'single' quotes and backslashes as in its
    parse_line. One pass over the line."""
    if '"' not in line and "'" not in line and "\\" not in line:
        words = []
        for w in _SPACE.split(line):
            if w[:1] in ("#", ";"):
                break
            if w:
                words.append(w)
        return words
    words, word, quote, escaped, started = [], [], "", False, False
    for c in line:
        if escaped or c == "\\" and quote != "'":
            if escaped:
                word.append(c)
                started = True
            escaped = not escaped
        elif quote:
            if c == quote:
                words.append("".join(word))
                word, quote, started = [], "", False
            else:
                word.append(c)
        elif c in " \t\v\f\r":
            if started:
                words.append("".join(word))
                word, started = [], False
        elif not started and c in "#;":
            break
        elif not started and c in "\"'":
            quote = c
        else:
            word.append(c)
            started = True
    if started or quote:
        words.append("".join(word))
    return words


def _folder(options: list, folder: str) -> str:
    """Where OpenVPN opens the config's relative names: its folder (--cd),
    then wherever a `cd` option in it goes."""
    for words, _ in options:
        if words[0] == "cd" and len(words) > 1:
            folder = os.path.join(folder, words[1])
    return folder


def _remotes(options: list) -> list[tuple[str, str, str]]:
    """Every server the config may connect to, as (host, port, udp|tcp),
    sorted: the order says which is tried first, not which they are."""
    out = set()

    def add(block: list) -> None:
        found = [w for w, inline in block if not inline and w[0] == "remote" and len(w) > 1]
        port = _last(block, ("port", "rport"), default_port)
        proto = _last(block, ("proto",), default_proto)
        for w in found:
            out.add((w[1].lower(), w[2] if len(w) > 2 else port, _transport(w[3] if len(w) > 3 else proto)))

    default_port = _last(options, ("port", "rport"), "1194")
    default_proto = _last(options, ("proto",), "udp")
    add(options)
    for words, inline in options:
        if inline and words[0] == "connection":
            add(list(_options(words[1])))
    return sorted(out)


def _last(options: list, names: tuple[str, ...], default: str) -> str:
    value = default
    for words, inline in options:
        if not inline and words[0] in names and len(words) > 1:
            value = words[1]
    return value


def _transport(proto: str) -> str:
    """udp4, udp6 and udp are one server's UDP; tcp-client, tcp4... its TCP."""
    proto = proto.lower()
    return proto[:3] if proto.startswith(("udp", "tcp")) else proto


def _identity(option: tuple, folder: str) -> str:
    """The client's certificate (or PKCS#12 bundle, or key) as one digest,
    written inline or in a file alike: the server knows a client by it."""
    (name, value), inline = option[0][:2], option[1]
    if inline:
        data = _base64(value) if name == "pkcs12" else value.encode("utf-8", "surrogateescape")
    else:
        path = os.path.join(folder, value)
        try:
            data = _read_bounded(path, f"the VPN config's {name}")
        except OSError:
            return f"unreadable {path}"  # OpenVPN will say why it cannot start
    if name == "cert":
        data = _pem_body(data.decode("ascii", "replace"), "CERTIFICATE")
    elif name == "key":
        data = b"".join(data.split())
    return hashlib.sha256(data).hexdigest()


def _pem_body(text: str, label: str) -> bytes:
    """The first PEM block's bytes (a certificate's DER, the client's own
    before any chain), whatever text or line breaks surround it."""
    begin = text.find(f"-----BEGIN {label}")
    start = text.find("-----", begin + 11) if begin >= 0 else -1
    end = text.find("-----END", start + 5) if start >= 0 else -1
    if end < 0:
        return b"".join(text.encode("ascii", "replace").split())
    return _base64(text[start + 5:end])


def _base64(text: str) -> bytes:
    """Decoded, line breaks and all; the text itself if it is not base64."""
    squeezed = "".join(text.split())
    try:
        return base64.b64decode(squeezed, validate=True)
    except ValueError:
        return squeezed.encode("utf-8", "surrogateescape")


def _file_identity(option: tuple, folder: str) -> str:
    """A file a config names, by its bytes; by its name if it cannot be read."""
    words, inline = option
    if inline or len(words) < 2:
        return "inline" if inline else "none"
    path = os.path.join(folder, words[1])
    try:
        return hashlib.sha256(_read_bounded(path, f"the VPN config's {words[0]}")).hexdigest()
    except OSError:
        return f"unreadable {path}"


# The keeper's Python is isolated (-I: no PYTHONPATH, no user site-packages,
# neither the working directory nor a script's on sys.path) and runs in /.
# It runs as whoever deploys, root on a build agent, and `-m` in the config's
# folder imported whatever a checkout put there (a deployer/vpn.py beside
# client.ovpn). Our own package comes first on sys.path instead, so the
# keeper is this deployer also when the interpreter has none installed; its
# folder is an argument, never spliced into the code.
