"""CONFIG_NAME and HOSTNAME come from outside: anything but a DNS name is refused before any side effect."""

import io
import json
import re
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.cli.deploy import main
from deployer.config import names
from deployer.errors import UsageError
from tests.conftest import armed_local_target, tree_digest

BOUNDED = settings(max_examples=200, deadline=None)

LDH = set(string.ascii_letters + string.digits + "-")
LOWER_LDH = set(string.ascii_lowercase + string.digits + "-")


def accepted(check, value: str) -> bool:
    try:
        assert check(value) == value
    except UsageError:
        return False
    return True


# Independent statements of the rules (RFC 1035 2.3.1 label, RFC 1123 2.1 host
# name, and no all-numeric top label so an IPv4 address is not a host name).

def is_config_name(s: str) -> bool:
    return 1 <= len(s) <= 63 and set(s) <= LOWER_LDH and s[0] != "-" and s[-1] != "-"


def is_hostname(s: str) -> bool:
    labels = s.split(".")
    return (
        len(s) <= 253
        and all(1 <= len(x) <= 63 and set(x) <= LDH and x[0] != "-" and x[-1] != "-" for x in labels)
        and not labels[-1].isdigit()
    )


# -- the validators ---------------------------------------------------------------

GOOD_NAMES = ["a", "0", "demo-acme", "alpha", "0day", "a-b-c", "x" * 63, "a" + "-" * 61 + "z"]
BAD_NAMES = [
    "", "-", "-a", "a-", "Demo", "ALPHA", "a.b", "a_b", "a b", " a", "a\t", "a\n", "a\r\n", "a;b",
    "a|b", "a&b", "$(reboot)", "`id`", "a'b", 'a"b', "a/b", "../x", "..", ".", "a\x00", "x" * 64,
    "dеmo",      # Cyrillic е
    "ａlpha",    # fullwidth a
    "alpha\u200b",  # zero-width space
    "ǅemo", "١٢٣",  # titlecase letter, Arabic-Indic digits
]
LONGEST_HOST = ".".join(["x" * 63] * 3 + ["y" * 61])
TOO_LONG_HOST = LONGEST_HOST + "y"
GOOD_HOSTS = [
    "localhost", "a", "demo-acme.example.com", "WEB1.Example.COM", "xn--bcher-kva.example",
    "1.example.com", "a.b.c.d.e", "x" * 63 + ".com", LONGEST_HOST,
]
BAD_HOSTS = [
    "", ".", "..", "a..b", "a.", ".a", "-a.com", "a-.com", "a.-b", "a.b-", "a b.com", "a;b.com",
    "a/b", "../etc", "1.2.3.4", "10", "web1.10", "x" * 64 + ".com", TOO_LONG_HOST,
    "example.com\n", "example.com\x00", "ex\u0430mple.com", "*.example.com", "example.com:80",
    "user@example.com", "a_b.com", "$(id).com", "`id`.com", "a|b", "a&b", "'a'", '"a"', "١.com",
]


@pytest.mark.parametrize("value", GOOD_NAMES)
def test_good_config_names(value):
    assert accepted(names.config_name, value)


@pytest.mark.parametrize("value", BAD_NAMES)
def test_bad_config_names(value):
    assert not accepted(names.config_name, value)


@pytest.mark.parametrize("value", GOOD_HOSTS)
def test_good_hostnames(value):
    assert accepted(names.hostname, value)


@pytest.mark.parametrize("value", BAD_HOSTS)
def test_bad_hostnames(value):
    assert not accepted(names.hostname, value)


def test_the_253_character_boundary():
    assert (len(LONGEST_HOST), len(TOO_LONG_HOST)) == (253, 254)


NEAR_LABEL = st.text(alphabet="az09-AZ_ .é", max_size=66)
ANY_NAME = st.one_of(st.text(max_size=70), NEAR_LABEL)
ANY_HOST = st.one_of(
    st.text(max_size=80),
    st.lists(NEAR_LABEL, min_size=1, max_size=5).map(".".join),
    st.lists(st.text(alphabet="ab9-", min_size=55, max_size=64), min_size=3, max_size=5).map(".".join),
)


@BOUNDED
@given(ANY_NAME)
def test_config_name_accepts_exactly_dns_labels(value):
    ok = accepted(names.config_name, value)
    assert ok == is_config_name(value)
    if ok:
        assert re.fullmatch(r"[a-z0-9-]{1,63}", value) and not value.startswith("-") and not value.endswith("-")


@BOUNDED
@given(ANY_HOST)
def test_hostname_accepts_exactly_rfc1123_names(value):
    ok = accepted(names.hostname, value)
    assert ok == is_hostname(value)
    if ok:
        assert re.fullmatch(r"[A-Za-z0-9.-]{1,253}", value)
        for label in value.split("."):
            assert 1 <= len(label) <= 63 and label[0] != "-" and label[-1] != "-"


# -- the real proof: through the CLI, nothing happens ----------------------------------

# Each of these is invalid in a config name and in a host name, wherever it appears.
HOSTILE = [";", "|", "&", "$", "`", "'", '"', "\n", "\r", "\t", " ", "/", "..", "\x00", "\\", "*", "?",
           "<", ">", "~", "#", "!", "(", ")", "{", "}", "=", ",", ":", "@", "%", "+", "_",
           "$(touch PWNED)", "`touch PWNED`", "; touch PWNED", "../../etc", "\u0430", "\uff41", "\u200b"]
HOSTILE_TEXT = st.builds(
    lambda before, bad, after: before + bad + after,
    st.one_of(st.text(max_size=12), st.sampled_from(["demo-acme", "demo-acme.example.com", "--", "-"])),
    st.sampled_from(HOSTILE),
    st.text(max_size=12),
)
GOOD_NAME, GOOD_HOST = "demo-acme", "demo-acme.example.com"


@pytest.fixture(scope="module")
def armed(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("armed")
    targets = armed_local_target(root)
    return root, targets, tree_digest(root)


def deploy(name: str, host: str, targets: Path) -> tuple[int, list[dict]]:
    out = io.StringIO()
    code = main([name, host, "--targets", str(targets), "--output", "json"], stdout=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_armed_target_really_deploys(tmp_path):
    # The control: with good input the same file changes the tree, so the
    # tests below would see it if hostile input got that far.
    code, events = deploy(GOOD_NAME, GOOD_HOST, armed_local_target(tmp_path))
    assert (code, events[-1]["error"]) == (0, None)
    for marker in ("HOOKED", "MIGRATED", "RESTARTED", "apache2/sites-available/demo-acme.conf",
                   "www/demo-acme"):
        assert (tmp_path / marker).exists(), marker


def assert_refused(code: int, events: list[dict], root: Path, before: dict) -> None:
    assert code == 2
    # Refused before the plan existed: no start event, only the final error
    # (or nothing, when argparse itself refused an option-like word).
    assert [e["event"] for e in events] in (["finished"], [])
    assert tree_digest(root) == before
    for marker in ("HOOKED", "MIGRATED", "RESTARTED", "www", "apache2"):
        assert not (root / marker).exists()


@BOUNDED
@given(HOSTILE_TEXT)
def test_hostile_config_name_changes_nothing(armed, name):
    root, targets, before = armed
    code, events = deploy(name, GOOD_HOST, targets)
    assert_refused(code, events, root, before)
    if events:
        assert events[-1]["error"].startswith("invalid config name ")


@BOUNDED
@given(HOSTILE_TEXT)
def test_hostile_hostname_changes_nothing(armed, host):
    root, targets, before = armed
    code, events = deploy(GOOD_NAME, host, targets)
    assert_refused(code, events, root, before)
    if events:
        assert events[-1]["error"].startswith("invalid hostname ")


@pytest.mark.parametrize(("name", "host"), [
    ("x" * 64, GOOD_HOST),
    (GOOD_NAME, "x" * 64 + ".example.com"),
    (GOOD_NAME, TOO_LONG_HOST),
    ("", GOOD_HOST),
    (GOOD_NAME, ""),
    ("Demo-Acme", GOOD_HOST),
    (GOOD_NAME, "10.0.0.1"),
    ("-n", GOOD_HOST),
    ("--targets=/etc/passwd", GOOD_HOST),
])
def test_other_invalid_input_changes_nothing(armed, name, host):
    root, targets, before = armed
    assert_refused(*deploy(name, host, targets), root, before)


@pytest.mark.parametrize("var", ["A;B=1", "A B=1", "$(id)=1", "1A=1", "=1", "NOVALUE", "HOSTNAME=evil.example.com",
                                 "DEPLOY_PATH=/", "CONFIG_NAME=x"])
def test_bad_var_option_changes_nothing(armed, var):
    root, targets, before = armed
    out = io.StringIO()
    code = main([GOOD_NAME, GOOD_HOST, "--targets", str(targets), "--output", "json", "--var", var], stdout=out)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert_refused(code, events, root, before)
    assert events[-1]["error"].startswith(("invalid variable name", "--var"))


def test_abbreviated_option_as_name_is_refused(armed):
    # argparse would take `--vers` for --version and exit 0: a build passing
    # such a name must not report success.
    root, targets, before = armed
    assert_refused(*deploy("--vers", GOOD_HOST, targets), root, before)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_anywhere_prints_help_and_deploys_nothing(armed, flag, capsys):
    # -h/--help is a request for help wherever it stands (exit 0, as every
    # CLI does); it never deploys.
    root, targets, before = armed
    code = main([flag, GOOD_HOST, "--targets", str(targets)], stdout=io.StringIO())
    assert code == 0
    assert "usage: deploy" in capsys.readouterr().out
    assert tree_digest(root) == before
