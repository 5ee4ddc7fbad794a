"""targets.yaml: merging, the catch-all, paths, hosts, errors that read like paths, and its JSON Schema."""

import importlib.util
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from deployer import config
from deployer.cli.deploy import main
from deployer.config import Apache, Host, Var, Vpn, loader
from deployer.config.model import ArtifactStore
from deployer.errors import ConfigError, UsageError


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A checkout: targets.yaml beside the files it names, and a HOME of its own."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text("")
    (home / ".ssh" / "id_ed25519").write_text("")
    monkeypatch.setenv("HOME", str(home))
    root = tmp_path / "checkout"
    for d in ("app", "templates", "vpn", "keys", "elsewhere"):
        (root / d).mkdir(parents=True)
    (root / "templates" / "default_template").write_text("ServerName <<HOSTNAME>>\n")
    (root / "vpn" / "alpha.ovpn").write_text("")
    (root / "keys" / "web2").write_text("")
    (root / "keys" / "known_hosts").write_text("")
    # Run from another directory: relative paths must not depend on the cwd.
    monkeypatch.chdir(root / "elsewhere")
    return root


def write(root: Path, text: str) -> Path:
    path = root / "targets.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """\
defaults:
  user: deploy
  port: 22
  known_hosts: keys/known_hosts
  package: {source: app, exclude: [.git, "*.pyc"]}
  apache: {dir: /etc/apache2, ctl: apache2ctl}
  vars: {ADMIN: ops@example.com, TIER: web}
"""


# -- merging and the catch-all ---------------------------------------------------


def test_defaults_merge_under_an_entry(site):
    targets = config.load(write(site, BASE + """\
targets:
  alpha:
    hosts: [web1.alpha.internal]
    apache: {ctl: sudo apache2ctl}
    package: {exclude: [node_modules]}
    vars: {TIER: db}
    pipeline: [package, upload, restart]
"""))
    t = targets.resolve("alpha")
    assert t.entry == "alpha"
    # Mappings merge key by key ...
    assert t.apache == Apache(dir="/etc/apache2", ctl=("sudo", "apache2ctl"))
    assert t.vars == {"ADMIN": Var("ops@example.com"), "TIER": Var("db")}
    assert t.package.source == str(site / "app")
    # ... lists replace.
    assert t.package.exclude == ("node_modules",)
    assert t.pipeline == ("package", "upload", "restart")


def test_migrate_null_replaces_the_default_command(site):
    t = config.load(write(site, BASE + """\
targets:
  alpha: {hosts: [web1.alpha.internal], migrate: null}
""")).resolve("alpha")
    assert t.migrate is None


CATCH_ALL = BASE + """\
targets:
  alpha: {hosts: [web1.alpha.internal]}
  "*": {hosts: [web1.demo.internal, web2.demo.internal]}
"""


def test_listed_name_uses_its_own_entry(site):
    t = config.load(write(site, CATCH_ALL)).resolve("alpha")
    assert (t.entry, [h.address for h in t.hosts]) == ("alpha", ["web1.alpha.internal"])


@pytest.mark.parametrize("name", ["demo-acme", "demo-x", "0day"])
def test_unknown_name_uses_the_catch_all(site, name):
    t = config.load(write(site, CATCH_ALL)).resolve(name)
    assert t.entry == "*"
    assert [h.address for h in t.hosts] == ["web1.demo.internal", "web2.demo.internal"]


def test_unknown_name_without_catch_all_is_a_usage_error(site):
    path = write(site, BASE + "targets:\n  alpha: {hosts: [web1.alpha.internal]}\n  beta: {transport: local}\n")
    with pytest.raises(UsageError) as e:
        config.load(path).resolve("demo-acme")
    assert str(e.value) == (f"{path}: no target named 'demo-acme' and no catch-all entry '*';"
                            " known: alpha, beta")


# -- paths -----------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_targets_file(site):
    t = config.load(write(site, BASE + """\
targets:
  alpha:
    hosts: [web1.alpha.internal]
    vpn: {kind: openvpn, config: vpn/alpha.ovpn, timeout: 5}
    template: templates/default_template
""")).resolve("alpha")
    assert t.vpn == Vpn(kind="openvpn", config=str(site / "vpn/alpha.ovpn"), timeout=5.0)
    assert t.known_hosts == str(site / "keys/known_hosts")
    assert t.template == str(site / "templates/default_template")
    assert t.package.source == str(site / "app")


def test_local_target_host_paths_are_relative_to_the_targets_file(site):
    # Its hosts are this machine, so its deploy_root and Apache paths may be too.
    t = config.load(write(site, BASE + """targets:
  local:
    transport: local
    deploy_root: www/
    apache: {dir: apache2, ctl: tools/apache2ctl -k}
""")).resolve("local")
    assert t.deploy_root == str(site / "www")
    assert t.apache == Apache(dir=str(site / "apache2"), ctl=(str(site / "tools/apache2ctl"), "-k"))


@pytest.mark.parametrize(("line", "key", "value"), [
    ("deploy_root: ~/www", "deploy_root", "~/www"),
    ("deploy_root: www", "deploy_root", "www"),
    ("deploy_root: ./www", "deploy_root", "./www"),
    ("apache: {dir: apache2}", "apache/dir", "apache2"),
    ("apache: {dir: ~deploy/apache2}", "apache/dir", "~deploy/apache2"),
    ("apache: {ctl: tools/apache2ctl}", "apache/ctl", "tools/apache2ctl"),
    ("apache: {ctl: ./apache2ctl configtest}", "apache/ctl", "./apache2ctl"),
])
def test_ssh_host_paths_are_never_resolved_on_the_runner(site, line, key, value):
    path = write(site, BASE + f"targets:\n  alpha:\n    hosts: [web1.alpha.internal]\n    {line}\n")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value) == (f"{path}: targets/alpha/{key}: expected an absolute path on the hosts"
                            f" (starting with /), got {value!r}")


@pytest.mark.parametrize(("root", "problem"), [
    ('"/srv/my www"', "contains white space, which would split it in the vhost"),
    ('"/srv/www\\nAlias /x /etc"', "contains a control character (U+000A)"),
])
def test_deploy_root_must_fit_unquoted_in_the_vhost(site, root, problem):
    path = write(site, BASE + f"targets:\n  alpha:\n    hosts: [web1.alpha.internal]\n    deploy_root: {root}\n")
    with pytest.raises(ConfigError, match="targets/alpha/deploy_root: '/srv/") as e:
        config.load(path)
    assert problem in str(e.value)


def test_duplicate_keys_are_errors_naming_both_lines(site):
    path = write(site, BASE + """\
targets:
  alpha: {hosts: [web1.alpha.internal]}
  beta: {hosts: [web1.beta.internal]}
  alpha: {hosts: [web9.alpha.internal]}
""")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    first = BASE.count("\n") + 2
    assert str(e.value) == (f"{path}: not valid YAML (line {first + 2}, column 3): duplicate key 'alpha'"
                            f" (first on line {first})")


def test_duplicate_var_is_an_error(site):
    path = write(site, BASE + "targets:\n  alpha:\n    hosts: [web1.alpha.internal]\n"
                 "    vars: {A: 1, B: 2, A: 3}\n")
    with pytest.raises(ConfigError, match="duplicate key 'A'"):
        config.load(path)


def test_vars_are_strings_as_written(site):
    # YAML 1.1 would read these as 493, 750, 31, 1.1 and a date.
    t = config.load(write(site, BASE + """\
targets:
  alpha:
    hosts: [web1.alpha.internal]
    vars: {AT: 12:30, MASK: 0x1F, VERSION: 1.10, SINCE: 2026-01-01, N: 7, BIG: 1_000, NEG: -0o17, E: 1e3}
""")).resolve("alpha")
    assert {k: v.value for k, v in t.vars.items()} == {
        "ADMIN": "ops@example.com", "TIER": "web", "AT": "12:30", "MASK": "0x1F", "VERSION": "1.10",
        "SINCE": "2026-01-01", "N": "7", "BIG": "1_000", "NEG": "-0o17", "E": "1e3"}


def test_vars_in_defaults_are_strings_as_written_after_merging(site):
    path = site / "targets.yaml"
    path.write_text("defaults:\n  known_hosts: keys/known_hosts\n  vars: {MODE: 0755}\n"
                    "targets:\n  alpha: {hosts: [web1.alpha.internal], vars: {UMASK: 0027}}\n")
    t = config.load(path).resolve("alpha")
    assert {k: v.value for k, v in t.vars.items()} == {"MODE": "0755", "UMASK": "0027"}


def test_targets_file_that_is_not_utf8_is_a_config_error(site):
    path = site / "targets.yaml"
    path.write_bytes(b"targets:\n  alpha:\n    vars: {A: caf\xe9}\n")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value) == f"{path}: not UTF-8 (line 3)"


def test_absolute_and_home_paths_are_kept(site, tmp_path):
    t = config.load(write(site, BASE + """\
targets:
  alpha:
    hosts: [web1.alpha.internal]
    known_hosts: ~/.ssh/known_hosts
    deploy_root: /srv/www//
    apache: {ctl: apache2ctl}
""")).resolve("alpha")
    assert t.known_hosts == str(tmp_path / "home/.ssh/known_hosts")
    assert t.deploy_root == "/srv/www"
    assert t.apache.ctl == ("apache2ctl",)


# -- hosts -----------------------------------------------------------------------


def test_host_shorthand_and_per_host_overrides(site, tmp_path):
    t = config.load(write(site, BASE + """\
targets:
  alpha:
    identity_file: ~/.ssh/id_ed25519
    hosts:
      - web1.alpha.internal
      - {address: web2.alpha.internal, user: root, port: 2222, identity_file: keys/web2}
      - {address: 10.0.1.7}
      - {address: "fd00::7", port: 2200}
""")).resolve("alpha")
    key = str(tmp_path / "home/.ssh/id_ed25519")
    assert t.hosts == (
        Host("web1.alpha.internal", 22, "deploy", key),
        Host("web2.alpha.internal", 2222, "root", str(site / "keys/web2")),
        Host("10.0.1.7", 22, "deploy", key),
        Host("fd00::7", 2200, "deploy", key),
    )
    assert [h.name for h in t.hosts] == ["web1.alpha.internal", "web2.alpha.internal:2222",
                                          "10.0.1.7", "fd00::7:2200"]


def test_local_transport_needs_no_hosts_nor_known_hosts(site):
    path = write(site, "targets:\n  local: {transport: local, package: {source: app}}\n")
    t = config.load(path).resolve("local")
    assert (t.transport, t.hosts, t.known_hosts) == ("local", (config.LOCAL_HOST,), None)


def test_hooks_and_shell_stages(site):
    t = config.load(write(site, BASE + """\
targets:
  alpha:
    hosts: [web1.alpha.internal]
    pipeline: [package, upload, collectstatic, restart]
    stages: {collectstatic: python manage.py collectstatic --noinput}
    hooks:  # a bare `on:` is the boolean true to YAML 1.1: read as "on"
      before: {restart: [{run: ./check, on: first}]}
      after: {restart: {run: notify done, on: local}}
""")).resolve("alpha")
    assert t.stages == {"collectstatic": config.Hook("python manage.py collectstatic --noinput")}
    assert t.before == {"restart": (config.Hook("./check", "first"),)}
    assert t.after == {"restart": (config.Hook("notify done", "local"),)}


# -- secrets from the environment --------------------------------------------------

SECRETS = BASE + """\
targets:
  alpha:
    hosts: [web1.alpha.internal]
    vars: {DB_PASSWORD: {env: ALPHA_DB_PASSWORD, secret: true}}
  beta:
    hosts: [web1.beta.internal]
    vpn: {kind: openvpn, config: vpn/missing-beta.ovpn}
"""


def test_secret_from_env_is_checked_only_for_the_target_resolved(site, monkeypatch):
    monkeypatch.delenv("ALPHA_DB_PASSWORD", raising=False)
    path = write(site, SECRETS)
    targets = config.load(path)  # beta's missing VPN file and alpha's env: not checked yet
    with pytest.raises(ConfigError) as e:
        targets.resolve("alpha")
    assert str(e.value) == (f"{path}: targets/alpha/vars/DB_PASSWORD/env:"
                            " environment variable ALPHA_DB_PASSWORD is not set")
    monkeypatch.setenv("ALPHA_DB_PASSWORD", "s3cret")
    assert targets.resolve("alpha").vars["DB_PASSWORD"] == Var("s3cret", secret=True, source="ALPHA_DB_PASSWORD")


def test_another_targets_missing_env_does_not_fail(site, monkeypatch):
    monkeypatch.delenv("ALPHA_DB_PASSWORD", raising=False)
    path = write(site, SECRETS.replace("vpn/missing-beta.ovpn", "vpn/alpha.ovpn"))
    assert config.load(path).resolve("beta").entry == "beta"


# -- malformed files ---------------------------------------------------------------

HOST = "hosts: [web1.alpha.internal]"
UNKNOWN = ("unknown key; expected one of: apache, artifact_store, batch_pause, batches, build, connect_timeout,"
           " deploy_root, files, health, hooks, hosts, identity_file, keep_releases, known_hosts,"
           " link_from_other_instances, max_failed, migrate, migrate_timeout, package, parallel, pipeline, port,"
           " protected, python, relay, relay_limit, shared, stages, step_timeout, template, transport, user, vars,"
           " vpn")

MALFORMED = [
    # (targets.yaml text, "<key/path>: <problem>" after "<file>: ")
    ("targets:\n  alpha: {hosts: [{address: web1.alpha.internal, port: '22'}]}\n",
     "targets/alpha/hosts/0/port: expected an integer"),
    ("targets:\n  alpha: {hosts: [web1.alpha.internal], port: 70000}\n",
     "targets/alpha/port: expected an integer from 1 to 65535, got 70000"),
    ("targets:\n  alpha: {hots: [web1.alpha.internal]}\n", "targets/alpha/hots: " + UNKNOWN),
    ("targets:\n  alpha: {" + HOST + ", artifact_store: {url: 'https://bucket/x'}}\n",
     "targets/alpha/artifact_store/url: expected s3://BUCKET or s3://BUCKET/PREFIX/, got 'https://bucket/x'"),
    ("targets:\n  alpha: {" + HOST + ", artifact_store: {url: 's3://bkt/p', endpoint: 'http://h/$(id)'}}\n",
     "targets/alpha/artifact_store/endpoint: expected http(s)://HOST[:PORT], got 'http://h/$(id)'"),
    ("targets:\n  alpha: {" + HOST + ", artifact_store: {url: 's3://bkt/a/../b/'}}\n",
     "targets/alpha/artifact_store/url: expected s3://BUCKET or s3://BUCKET/PREFIX/, got 's3://bkt/a/../b/'"),
    ("targets:\n  alpha: {" + HOST + ", artifact_store: {url: 's3://bkt', endpoint: 'http://h:99999'}}\n",
     "targets/alpha/artifact_store/endpoint: expected http(s)://HOST[:PORT] with a port from 1 to 65535,"
     " got 'http://h:99999'"),
    ("targets:\n  alpha: {" + HOST + ", artifact_store: {url: 's3://bkt', endpoint: 'http://[:]'}}\n",
     "targets/alpha/artifact_store/endpoint: expected http(s)://HOST[:PORT] with a port from 1 to 65535,"
     " got 'http://[:]'"),
    ("targets:\n  alpha: {" + HOST + ", artifact_store: {endpoint: 'http://h:8333'}}\n",
     "targets/alpha/artifact_store/url: missing; this key is required"),
    ("targets:\n  alpha: {" + HOST + ", python: {requirements: r.txt, version: 3.11}}\n",
     "targets/alpha/python/version: expected the hosts' Python version, exactly, such as \"3.11.2\", got '3.11'"),
    ("targets:\n  alpha: {" + HOST + ", python: {requirements: r.txt, version: '3.11.2', platform: linux}}\n",
     "targets/alpha/python/platform: expected a manylinux wheel platform such as manylinux_2_36_x86_64, got"
     " 'linux'"),
    ("targets:\n  alpha: {" + HOST + ", python: {requirements: r.txt, version: '3.11.2', no_index: true}}\n",
     "targets/alpha/python/no_index: with no index, find_links must name where the wheels are"),
    ("targets:\n  alpha: {" + HOST + ", python: {requirements: r.txt, version: '3.11.2', interpreter: python3}}\n",
     "targets/alpha/python/interpreter: expected an absolute path on the hosts, got 'python3'"),
    ("targets:\n  alpha: {" + HOST + ", shared: {dirs: [conf]}, files: [{template: t, path: conf/.env}]}\n",
     "targets/alpha/files/0/path: 'conf/.env' and 'conf': a rendered file cannot be, or be inside, a shared path"
     " or another file"),
    ("targets:\n  alpha: {" + HOST + ", files: [{template: t, path: .env, mode: '0644'}]}\n",
     "targets/alpha/files/0/mode: 0644: the owner must read it, and nobody else but the group may (no execute"
     " bits): e.g. 0600 or 0640"),
    ("targets:\n  alpha: {" + HOST + ", health: {path: /, headers: {Host: x}}}\n",
     "targets/alpha/health/headers/Host: deployer sets Host itself (Host: HOSTNAME); remove it"),
    ("targets:\n  alpha: {" + HOST + ", shared: {writable: [media]}}\n",
     "targets/alpha/shared/writable: writable needs group: the web server's (www-data)"),
    ("targets:\n  alpha: {" + HOST + ", hooks: {first_deploy: {run: createdb x, on: local}}}\n",
     "targets/alpha/hooks/first_deploy/0/on: runs on the hosts: on: all or first"),
    ("targets:\n  alpha: {" + HOST + ", vars: {PATH: {value: /x, export: true}}}\n",
     "targets/alpha/vars/PATH/export: PATH is set for migrate and hooks by deployer or the shell; export another"
     " name"),
    ("targets:\n  alpha: {" + HOST + ", files: [{template: t, path: .venv/x}]}\n",
     "targets/alpha/files/0/path: '.venv/x' is a name deployer keeps in every release"),
    ("targets:\n  alpha: {" + HOST + ", build: []}\n",
     "targets/alpha/build/run: expected a command or a non-empty list of commands"),
    ("targets:\n  alpha: {" + HOST + ", vars: {VENV: x}}\n",
     "targets/alpha/vars/VENV: VENV is set by deployer and cannot be overridden"),
    ("defaults: {portt: 22}\ntargets:\n  alpha: {" + HOST + "}\n",
     "defaults/portt: " + UNKNOWN),
    ("target:\n  alpha: {" + HOST + "}\n", "target: unknown key; expected one of: defaults, targets"),
    ("targets:\n  alpha: {" + HOST + ", transport: docker}\n",
     "targets/alpha/transport: expected one of ssh, local, got 'docker'"),
    ("targets:\n  alpha: {" + HOST + ", vpn: {kind: wireguard}}\n",
     "targets/alpha/vpn/kind: expected one of none, openvpn, got 'wireguard'"),
    ("targets:\n  alpha: {" + HOST + ", vpn: {kind: openvpn, config: x.ovpn, timeout: 0}}\n",
     "targets/alpha/vpn/timeout: expected a positive number of seconds"),
    ("targets:\n  alpha: {hosts: []}\n", "targets/alpha/hosts: expected a non-empty list of hosts"),
    ("targets:\n  alpha: {hosts: [web1.alpha.internal, 'web1.alpha.internal']}\n",
     "targets/alpha/hosts/1: duplicate host web1.alpha.internal"),
    ("targets:\n  alpha: {hosts: [web1.x, {address: web1.x, port: 22}]}\n",
     "targets/alpha/hosts/1: duplicate host web1.x"),
    ("targets:\n  alpha: {hosts: ['web1;reboot']}\n",
     "targets/alpha/hosts/0/address: not a host name or IP address: 'web1;reboot'"),
    ("targets:\n  alpha: {hosts: [{addr: web1.x}]}\n",
     "targets/alpha/hosts/0/addr: unknown key; expected one of: address, identity_file, port, user"),
    ("- just\n- a list\n", "expected a mapping, got a list"),
    ("", "expected a mapping, got nothing"),
    ("targets: {}\n", "targets: expected at least one target"),
    ("targets:\n", "targets: expected a mapping, got nothing"),
    ("targets:\n  Alpha: {" + HOST + "}\n",
     "targets/Alpha: invalid config name 'Alpha': use 1-63 lowercase letters, digits and hyphens,"
     " not starting or ending with a hyphen (e.g. demo-acme)"),
    ("targets:\n  alpha: [web1.alpha.internal]\n", "targets/alpha: expected a mapping, got a list"),
    ("targets:\n  alpha: {" + HOST + ", vars: {1X: a}}\n",
     "targets/alpha/vars/1X: invalid variable name '1X': use letters, digits and underscores,"
     " not starting with a digit"),
    ("targets:\n  alpha: {" + HOST + ", vars: {SERVER-NAME: a}}\n",
     "targets/alpha/vars/SERVER-NAME: invalid variable name 'SERVER-NAME': use letters, digits and"
     " underscores, not starting with a digit"),
    ("targets:\n  alpha: {" + HOST + ", vars: {HOSTNAME: evil.example.com}}\n",
     "targets/alpha/vars/HOSTNAME: HOSTNAME is set by deployer and cannot be overridden"),
    # A mistake in the defaults is named where it is written, not in the first target.
    ("defaults: {vars: {DEPLOY_PATH: /tmp}}\ntargets:\n  alpha: {" + HOST + "}\n",
     "defaults/vars/DEPLOY_PATH: DEPLOY_PATH is set by deployer and cannot be overridden"),
    ("targets:\n  alpha: {" + HOST + ", vars: {A: {env: X, value: y}}}\n",
     "targets/alpha/vars/A: expected exactly one of value or env"),
    ("targets:\n  alpha: {" + HOST + ", vars: {A: {env: X, secret: 'yes'}}}\n",
     "targets/alpha/vars/A/secret: expected true or false"),
    ("targets:\n  alpha: {" + HOST + ", relay: 'no'}\n", "targets/alpha/relay: expected true or false"),
    ("targets:\n  alpha: {" + HOST + ", vars: {A: [1, 2]}}\n",
     "targets/alpha/vars/A: expected a mapping, got a list"),
    ("targets:\n  alpha: {" + HOST + ", pipeline: [package, upload, upload]}\n",
     "targets/alpha/pipeline/2: stage 'upload' listed twice"),
    ("targets:\n  alpha: {" + HOST + ", pipeline: [package, upload], hooks: {before: {restart: ./x}}}\n",
     "targets/alpha/hooks/before/restart: no such stage in the pipeline"),
    ("targets:\n  alpha: {" + HOST + ", hooks: {afterr: {restart: ./x}}}\n",
     "targets/alpha/hooks/afterr: unknown key; expected one of: after, before, destroy, first_deploy"),
    ("targets:\n  alpha: {" + HOST + ", hooks: {after: {restart: {run: ./x, on: everywhere}}}}\n",
     "targets/alpha/hooks/after/restart/0/on: expected one of all, first, local, got 'everywhere'"),
    ("targets:\n  alpha: {" + HOST + ", migrate: ''}\n",
     "targets/alpha/migrate: expected a non-empty string, got an empty string"),
    ("targets:\n  alpha: {" + HOST + ", connect_timeout: true}\n",
     "targets/alpha/connect_timeout: expected a positive number of seconds"),
    ("targets:\n  alpha: {" + HOST + ", package: {exclude: .git}}\n",
     "targets/alpha/package/exclude: expected a list of strings, got a string"),
    ("targets:\n  alpha: {" + HOST + ", shared: {dirs: [../etc]}}\n",
     "targets/alpha/shared/dirs/0: expected a path inside the release, such as media or var/db, got '../etc'"),
    ("targets:\n  alpha: {" + HOST + ", shared: {files: [/etc/passwd]}}\n",
     "targets/alpha/shared/files/0: expected a path inside the release, such as media or var/db,"
     " got '/etc/passwd'"),
    ("targets:\n  alpha: {" + HOST + ", shared: {dirs: [media, media/x]}}\n",
     "targets/alpha/shared: 'media/x' is inside 'media': name only the outer one"),
    ("targets:\n  alpha: {" + HOST + ", shared: {dirs: [.deployer-sums]}}\n",
     "targets/alpha/shared/dirs/0: '.deployer-sums' is a name deployer keeps in every release"),
    ("targets:\n  alpha: {" + HOST + ", shared: {dirs: [\"a\\nb\"]}}\n",
     "targets/alpha/shared/dirs/0: 'a\\nb' contains a control character (U+000A); a value must be one line"
     " of UTF-8 text"),
    ("targets:\n  alpha: {" + HOST + ", health: {path: health}}\n",
     "targets/alpha/health/path: expected a URL path such as /health, got 'health'"),
    ("targets:\n  alpha: {" + HOST + ", health: {path: \"/a b\"}}\n",
     "targets/alpha/health/path: expected a URL path such as /health, got '/a b'"),
    ("targets:\n  alpha: {" + HOST + ", health: {path: /h, status: 99}}\n",
     "targets/alpha/health/status: expected an HTTP status from 100 to 599, or a list of them, got 99"),
    ("targets:\n  alpha: {" + HOST + ", shared: {dir: [media]}}\n",
     "targets/alpha/shared/dir: unknown key; expected one of: create, dirs, files, group, root, writable"),
]


@pytest.mark.parametrize(("text", "expected"), MALFORMED)
def test_malformed_file_is_rejected_at_load(site, text, expected):
    path = write(site, text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value) == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("targets:\n  alpha: {" + HOST + ", vpn: {kind: openvpn, config: vpn/nope.ovpn}}\n",
         "targets/alpha/vpn/config: file not found: {site}/vpn/nope.ovpn"),
        ("targets:\n  alpha: {" + HOST + ", known_hosts: keys/nope}\n",
         "targets/alpha/known_hosts: file not found: {site}/keys/nope"),
        ("targets:\n  alpha: {hosts: [{address: web1.x, identity_file: keys/nope}]}\n",
         "targets/alpha/hosts/0/identity_file: file not found: {site}/keys/nope"),
        ("targets:\n  alpha: {" + HOST + ", template: nope.tmpl}\n",
         "targets/alpha/template: file not found: {site}/nope.tmpl"),
        ("targets:\n  alpha: {" + HOST + ", package: {source: nope}}\n",
         "targets/alpha/package/source: directory not found: {site}/nope"),
    ],
)
def test_missing_files_fail_when_the_target_is_resolved(site, text, expected):
    path = write(site, "defaults: {known_hosts: keys/known_hosts, package: {source: app}}\n" + text)
    targets = config.load(path)
    with pytest.raises(ConfigError) as e:
        targets.resolve("alpha")
    assert str(e.value) == f"{path}: {expected.format(site=site)}"


def test_an_artifact_store_without_botocore_fails_when_the_target_is_resolved(site, monkeypatch):
    path = write(site, "defaults: {known_hosts: keys/known_hosts, package: {source: app}}\n"
                       "targets:\n  alpha: {" + HOST + ", artifact_store: {url: 's3://deploys/x'}}\n")
    targets = config.load(path)
    assert targets.resolve("alpha").artifact_store == ArtifactStore("deploys", "x/")
    # This machine without it (an uninstall would change the venv the other tests use).
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "botocore" else find_spec(name, *a))
    with pytest.raises(ConfigError) as e:
        targets.resolve("alpha")
    assert str(e.value) == (f"{path}: targets/alpha/artifact_store: an S3 artifact store needs botocore on this"
                            " machine: pip install 'deployer[s3]'")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("targets:\n  alpha: {hosts: [web1\n", 3),
        ("defaults:\n  user: deploy\n    port: 22\n", 3),
        ("targets:\n\talpha: {}\n", 2),
    ],
)
def test_text_that_is_not_yaml_names_the_line(site, text, line):
    path = write(site, text)
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML \(line {line}, column \d+\): \S"):
        config.load(path)


def test_unreadable_file_is_a_usage_error(site):
    with pytest.raises(UsageError, match=r"nope\.yaml: cannot read: No such file or directory$"):
        config.load(site / "nope.yaml")


@pytest.mark.parametrize(("text", "expected"), MALFORMED[:3] + MALFORMED[-4:])
def test_cli_reports_a_bad_file_and_exits_2(site, text, expected):
    path = write(site, text)
    out = io.StringIO()
    code = main(["alpha", "alpha.example.com", "--targets", str(path), "--output", "plain"], stdout=out)
    assert (code, out.getvalue()) == (2, f"error: {path}: {expected}\n")


def test_the_repository_targets_file_is_valid():
    targets = config.load(Path(__file__).resolve().parents[2] / "targets.yaml")
    assert targets.names() == ["*", "alpha", "local"]
    local = targets.resolve("local")
    assert local.transport == "local" and local.pipeline == config.DEFAULT_PIPELINE


def test_yaml_1_1_booleans_stay_strings(tmp_path):
    # `on: local` must stay a key named "on"; `no` is Norway, not False.
    (tmp_path / "t").write_text("x")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local:\n    transport: local\n    template: t\n"
        "    vars: {COUNTRY: no, FLAG: on}\n"
        "    hooks: {after: {restart: [{run: echo hi, on: local}]}}\n")
    target = config.load(tmp_path / "targets.yaml").resolve("local")
    assert {k: v.value for k, v in target.vars.items()} == {"COUNTRY": "no", "FLAG": "on"}
    assert target.after["restart"][0].on == "local"


def test_shell_stage_may_not_shadow_a_built_in(tmp_path):
    (tmp_path / "t").write_text("x")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local:\n    transport: local\n    template: t\n    stages: {migrate: echo hi}\n")
    with pytest.raises(UsageError, match="targets/local/stages/migrate: a built-in stage has this name"):
        config.load(tmp_path / "targets.yaml")


@pytest.mark.parametrize("value, message", [
    ("true", "a boolean is not a value for a template; quote it"),
    ("null", "nothing is not a value for a template; quote it"),
])
def test_unquoted_boolean_or_null_var_says_quote_it(tmp_path, value, message):
    (tmp_path / "t").write_text("x")
    (tmp_path / "targets.yaml").write_text(
        f"targets:\n  local:\n    transport: local\n    template: t\n    vars: {{DEBUG: {value}}}\n")
    with pytest.raises(UsageError, match=f"targets/local/vars/DEBUG: {message}"):
        config.load(tmp_path / "targets.yaml")



def test_merge_keys_still_work_and_may_be_overridden(site):
    t = config.load(write(site, BASE + """\
targets:
  alpha: &alpha
    hosts: [web1.alpha.internal]
    vars: {TIER: web}
  beta:
    <<: *alpha
    vars: {TIER: db}
""")).resolve("beta")
    assert t.hosts == (Host("web1.alpha.internal", user="deploy"),)
    assert t.vars["TIER"] == Var("db")


@pytest.mark.parametrize(("text", "message"), [
    ("targets:\n  ? [a]\n  : {}\n", "not valid YAML (line 2, column 5): a key must be a plain value"),
    ("targets: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML: nested too deeply"),
])
def test_odd_yaml_is_a_config_error_not_a_crash(site, text, message):
    path = site / "targets.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value) == f"{path}: {message}"


# -- defaults, checked as merged ---------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("defaults: {port: '22'}\ntargets:\n  alpha: {" + HOST + "}\n", "defaults/port: expected an integer"),
    ("defaults: {port: '22'}\ntargets:\n  alpha:\n", "defaults/port: expected an integer"),
    # The entry has apache: too, merged with the defaults' key by key.
    ("defaults: {apache: {ctll: x}}\ntargets:\n  alpha: {" + HOST + ", apache: {port: 81}}\n",
     "defaults/apache/ctll: unknown key; expected one of: ctl, dir, port, vhost_group, vhost_mode, vhost_owner"),
    # Wrong only as merged: named in the target.
    ("defaults: {vars: {A: {env: X}}}\ntargets:\n  alpha: {" + HOST + ", vars: {A: {value: y}}}\n",
     "targets/alpha/vars/A: expected exactly one of value or env"),
])
def test_a_mistake_in_the_defaults_is_named_where_it_is_written(site, text, expected):
    path = write(site, text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value) == f"{path}: {expected}"


def test_a_mapping_in_the_defaults_may_lack_what_every_target_adds(site):
    t = config.load(write(site, BASE.replace("defaults:\n", "defaults:\n  vpn: {kind: openvpn, timeout: 5}\n"
                                             "  health: {timeout: 5}\n") + """\
targets:
  alpha: {hosts: [web1.alpha.internal], vpn: {config: vpn/alpha.ovpn}, health: {path: /up}}
""")).resolve("alpha")
    assert t.vpn == Vpn(kind="openvpn", config=str(site / "vpn/alpha.ovpn"), timeout=5.0)
    assert (t.health.path, t.health.timeout, t.health.port) == ("/up", 5.0, 80)


def test_a_host_may_do_without_the_targets_key(site, tmp_path):
    t = config.load(write(site, BASE + """\
targets:
  alpha:
    identity_file: ~/.ssh/id_ed25519
    hosts: [web1.alpha.internal, {address: web2.alpha.internal, identity_file: null}]
""")).resolve("alpha")
    assert [h.identity_file for h in t.hosts] == [str(tmp_path / "home/.ssh/id_ed25519"), None]


# -- the JSON Schema -----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_schema_is_the_one_the_models_make():
    committed = json.loads(config.SCHEMA_FILE.read_text(encoding="utf-8"))
    # After a change to the models: python -m deployer.config > deployer/config/targets.schema.json
    assert committed == config.json_schema()


def test_the_committed_reference_is_the_one_the_schema_makes():
    from deployer.config.reference import markdown

    committed = (REPO / "docs" / "reference" / "targets.md").read_text(encoding="utf-8")
    # After a change to the models: python -m deployer.config reference > docs/reference/targets.md
    assert committed == markdown(config.json_schema())
    # Every key of every part of an entry is in it, with its words.
    schema = config.json_schema()
    for definition in [schema, *schema["definitions"].values()]:
        for key, prop in definition["properties"].items():
            words = " ".join(prop["description"].split())[:40].replace("<", "&lt;")
            assert f"| `{key}` |" in committed and words in committed


def test_every_key_has_text_for_the_editors_hover():
    schema = config.json_schema()
    for name, definition in [("targets.yaml", schema), *schema["definitions"].items()]:
        for key, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}: {key}"


def test_pydantic_is_imported_only_to_read_a_targets_file():
    # `deploy --help` and `deployer init` need no schema: pydantic's import
    # would be most of their start-up time.
    code = ("import sys, deployer.cli.deploy, deployer.cli.manage;"
            " print(sorted(m for m in sys.modules if 'pydantic' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout == "[]\n"


def _schema_validator():
    jsonschema = pytest.importorskip("jsonschema")  # not a dependency: the models themselves validate
    jsonschema.Draft7Validator.check_schema(config.json_schema())
    return jsonschema.Draft7Validator(config.json_schema())


def _yaml(text: str):
    # As an editor reads it: YAML 1.2, where `on:` is a key and `no` a string.
    return yaml.load(text, Loader=loader._Loader)


def _uncommented(text: str) -> str:
    """The skeleton with its commented examples (alpha, "*") as a user uncomments them."""
    head, entries = text.split("\ntargets:\n")
    entries = re.sub(r"(?m)^  # (\"\*\"|[a-z][a-z0-9-]*):$", r"  \1:", entries)
    return f"{head}\ntargets:\n{re.sub(r'(?m)^  #   ', '    ', entries)}"


@pytest.mark.parametrize(("name", "edit"), [
    ("targets.yaml", str),
    ("deployer/skeleton/targets.yaml", str),
    ("deployer/skeleton/targets.yaml", _uncommented),
])
def test_the_files_we_ship_are_valid_for_the_schema_too(name, edit):
    doc = _yaml(edit((REPO / name).read_text()))
    assert "local" in doc["targets"]
    assert ("alpha" in doc["targets"]) == (edit is _uncommented or name == "targets.yaml")
    assert [e.message for e in _schema_validator().iter_errors(doc)] == []


def test_the_files_we_ship_point_editors_at_the_schema():
    assert (REPO / "targets.yaml").read_text().splitlines()[0] == (
        "# yaml-language-server: $schema=./deployer/config/targets.schema.json")
    # In a project of its own, deployer init writes the schema beside it.
    assert (REPO / "deployer/skeleton/targets.yaml").read_text().splitlines()[0] == (
        "# yaml-language-server: $schema=./.deployer/targets.schema.json")


# What an editor flags as it is typed; the rest needs deployer (another
# key's value, names.hostname, a path's parts, the file system).
_SCHEMA_SAYS = re.compile(
    r"unknown key|invalid (config|variable) name|\w+ is set by deployer|stage '\w+' listed twice|expected (an"
    r" integer|one of|true or false|a positive number|a non-empty|a mapping|a list|at least one|a URL)")


@pytest.mark.parametrize(("text", "expected"),
                         [(t, e) for t, e in MALFORMED if _SCHEMA_SAYS.match(e.split(": ", 1)[-1])])
def test_the_schema_refuses_what_it_can_say(text, expected):
    assert list(_schema_validator().iter_errors(_yaml(text))), expected

