"""The words that come from outside, validated before anything else looks at them.

The config name and hostname TeamCity passes us end up in paths, Apache
config and shell commands, so they are held to rules that leave no room for
a metacharacter: a DNS label and an RFC 1123 host name. Template values
(`--var`, `vars:`, the environment) may be any one line of UTF-8 text.
"""

import ipaddress
import re
import unicodedata

from deployer.errors import UsageError

CONFIG_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def config_name(value: str) -> str:
    """A lowercase DNS label (RFC 1035 section 2.3.1, digits allowed first)."""
    if not CONFIG_NAME.fullmatch(value):
        raise UsageError(
            f"invalid config name {value!r}: use 1-63 lowercase letters, digits"
            " and hyphens, not starting or ending with a hyphen (e.g. demo-acme)"
        )
    return value


# A release is named by the time it was made (UTC) and its source's digest.
RELEASE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]+")


def release(value: str) -> str:
    if not RELEASE.fullmatch(value):
        raise UsageError(f"release {value!r}: expected a release name such as 20261128T101500Z-3f2a9c81d0e4"
                         " (deployer releases CONFIG_NAME lists them)")
    return value


# A run's id (Context.run_id: 8 random bytes in hex). Hosts hand it back (a
# lock's owner, the history), and it goes into file names and commands there.
RUN_ID = re.compile(r"[0-9a-f]{16}")


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


# Apache reads its configuration a line at a time: a value with a line break
# in it is a new directive (an Alias to /etc), and a trailing backslash
# joins the next line of the template to it. Python's splitlines() also
# breaks at U+2028/U+2029, which would let a value slip past line-based
# masking. Lone surrogates are how Python hands over bytes that were not
# UTF-8 in argv or the environment.
_REFUSED_CATEGORIES = {"Cc": "a control character", "Cs": "bytes that are not UTF-8",
                       "Zl": "a line separator", "Zp": "a paragraph separator"}


def value_problem(value: str) -> str | None:
    """Why `value` may not go into the vhost, or None; never quotes the value (it may be a secret)."""
    for ch in value:
        what = _REFUSED_CATEGORIES.get(unicodedata.category(ch))
        if what is not None:
            code = "" if what.startswith("bytes") else f" (U+{ord(ch):04X})"
            return f"contains {what}{code}; a value must be one line of UTF-8 text"
    if value.endswith("\\"):
        return "ends with a backslash, which Apache reads as a line continuation"
    return None


def token_value(key: str, value: str, where: str) -> str:
    """`value` for token `key` if it is one safe line; `where` says where it came from."""
    problem = value_problem(value)
    if problem:
        raise UsageError(f"{where}: value of {key} {problem}")
    return value


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
