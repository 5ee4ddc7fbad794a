"""The two words TeamCity passes us, validated before anything else looks at them.

Both end up in paths, Apache config and shell commands, so they are held to
rules that leave no room for a metacharacter: a DNS label for the config name
and an RFC 1123 host name for the hostname.
"""

import re

from deployer.errors import UsageError

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def config_name(value: str) -> str:
    """A lowercase DNS label (RFC 1035 section 2.3.1, digits allowed first)."""
    if not _LABEL.fullmatch(value):
        raise UsageError(
            f"invalid config name {value!r}: use 1-63 lowercase letters, digits"
            " and hyphens, not starting or ending with a hyphen (e.g. demo-acme)"
        )
    return value


def hostname(value: str) -> str:
    """An RFC 1123 host name: dot-separated labels, at most 253 characters."""
    labels = value.split(".")
    if (
        len(value) > 253
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise UsageError(
            f"invalid hostname {value!r}: use dot-separated labels of letters,"
            " digits and hyphens (e.g. demo-acme.example.com)"
        )
    return value


def token_name(value: str) -> str:
    """A template token name, as written between << and >>."""
    if not _TOKEN.fullmatch(value):
        raise UsageError(
            f"invalid variable name {value!r}: use letters, digits and"
            " underscores, not starting with a digit"
        )
    return value
