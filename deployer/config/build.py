"""What the models cannot know, checked while the frozen Target is made:
paths on this machine or on the hosts, rules that depend on the transport,
and, for the one target being deployed, files and environment variables."""

import importlib.util
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from deployer.config import names
from deployer.config.model import (
    LOCAL_APACHE_CTL,
    LOCAL_HOST,
    Apache,
    ArtifactStore,
    Build,
    Health,
    Hook,
    Host,
    Missing,
    Package,
    Python,
    RenderedFile,
    Shared,
    Target,
    Var,
    Vpn,
)
from deployer.errors import ConfigError
from deployer.quoting import words

# -- what the models cannot know ---------------------------------------------------------


class Builder:
    """A checked entry made a Target: paths resolved, and checked against the
    transport and, when one target is resolved, against this machine."""

    def __init__(self, source: str, base: Path, check_environment: bool, missing: list[Missing] | None = None):
        self.source = source
        self.base = base
        self.check_environment = check_environment
        # None: what this machine lacks fails the read, as any other error.
        self.missing = missing

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(self.source, path, problem)

    def lacks(self, path: str, problem: str, kind: str, var: str = "") -> None:
        """This machine lacks something a real run needs: fail, or note it."""
        if self.missing is None:
            raise self.fail(path, problem)
        # Every host of a target names the same key file: listed once.
        if all((m.kind, m.problem) != (kind, problem) for m in self.missing):
            self.missing.append(Missing(path, problem, kind, var))

    def artifact_store(self, spec: Any, path: str) -> ArtifactStore:  # spec: an ArtifactStoreSpec
        # Before anything runs: without it, a run would fail at the upload.
        if self.check_environment and importlib.util.find_spec("botocore") is None:
            self.lacks(path, "an S3 artifact store needs botocore on this machine: pip install 'deployer[s3]'",
                       "library")
        bucket, _, prefix = spec.url.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        return ArtifactStore(bucket, f"{prefix}/" if prefix else "", spec.endpoint and spec.endpoint.rstrip("/"),
                             spec.region)

    def path(self, value: str) -> str:
        return str(self.base / os.path.expanduser(value))

    def file(self, value: str, path: str, kind: str) -> str:
        resolved = self.path(value)
        if self.check_environment and not os.path.isfile(resolved):
            self.lacks(path, f"file not found: {resolved}", kind)
        return resolved

    def absolute(self, value: str) -> str:
        return os.path.normpath(self.path(value)).rstrip("/") or "/"

    def target(self, entry: str, t: Any, path: str) -> Target:  # t: a TargetSpec
        # In the order of the keys in targets.yaml's reference: a dry run lists what
        # this machine lacks in this order.
        transport = t.transport
        hosts = self.hosts(t, path) if transport == "ssh" else (LOCAL_HOST,)
        known_hosts = self.file(t.known_hosts, f"{path}/known_hosts", "connect") if transport == "ssh" else None
        apache = self.apache(t.apache, f"{path}/apache", transport)
        deploy_root = self.deploy_root(t.deploy_root, f"{path}/deploy_root", transport)
        return Target(
            entry=entry,
            transport=transport,
            hosts=hosts,
            known_hosts=known_hosts,
            connect_timeout=float(t.connect_timeout),
            step_timeout=float(t.step_timeout),
            migrate_timeout=float(t.migrate_timeout),
            parallel=t.parallel,
            batches=tuple(t.batches),
            batch_pause=float(t.batch_pause),
            max_failed=t.max_failed,
            relay=t.relay,
            relay_limit=t.relay_limit,
            link_from_other_instances=t.link_from_other_instances,
            artifact_store=None if t.artifact_store is None or transport != "ssh" else self.artifact_store(
                t.artifact_store, f"{path}/artifact_store"),
            keep_releases=t.keep_releases,
            protected=t.protected,
            deploy_root=deploy_root,
            vpn=self.vpn(t.vpn, f"{path}/vpn"),
            apache=apache,
            migrate=t.migrate,
            package=self.package(t.package, f"{path}/package"),
            health=None if t.health is None else Health(
                path=t.health.path, statuses=tuple(t.health.status), timeout=float(t.health.timeout),
                port=apache.port if t.health.port is None else t.health.port,
                headers=tuple(sorted(t.health.headers.items()))),
            shared=Shared(
                root=self.deploy_root(t.shared.root or t.deploy_root, f"{path}/shared/root", transport),
                dirs=tuple(t.shared.dirs), files=tuple(t.shared.files), create=tuple(t.shared.create),
                group=t.shared.group or "", writable=tuple(t.shared.writable)),
            template=self.file(t.template, f"{path}/template", "template"),
            build=None if t.build is None else Build(tuple(t.build.run), t.build.copy_source,
                                                     float(t.build.timeout)),
            python=None if t.python is None else self.python(t.python, f"{path}/python", transport),
            files=tuple(RenderedFile(self.file(f.template, f"{path}/files/{i}/template", "template"), f.path,
                                     f.mode, f.owner or "", f.group or "", f.shared)
                        for i, f in enumerate(t.files)),
            vars={key: self.var(v, f"{path}/vars/{key}", key) for key, v in t.vars.items()},
            pipeline=tuple(t.pipeline),
            stages={name: Hook(h.run, h.on) for name, h in t.stages.items()},
            before={stage: tuple(Hook(h.run, h.on) for h in hooks) for stage, hooks in t.hooks.before.items()},
            after={stage: tuple(Hook(h.run, h.on) for h in hooks) for stage, hooks in t.hooks.after.items()},
            first_deploy=tuple(Hook(h.run, h.on) for h in t.hooks.first_deploy),
            on_destroy=tuple(Hook(h.run, h.on) for h in t.hooks.destroy),
        )

    def host_path(self, value: str, path: str, transport: str) -> str:
        """A path on the hosts. For the local target the hosts are this machine,
        so it may be relative to this file; for SSH it is never resolved here
        (`~/www` would become the runner's home, `www` a folder on the runner)."""
        if transport == "local":
            return self.absolute(value)
        if not value.startswith("/"):
            raise self.fail(path, f"expected an absolute path on the hosts (starting with /), got {value!r}")
        return posixpath.normpath(value).rstrip("/") or "/"

    def deploy_root(self, value: str, path: str, transport: str) -> str:
        root = self.host_path(value, path, transport)
        # DEPLOY_PATH goes into the vhost unquoted (<<DEPLOY_PATH>>/static).
        problem = names.value_problem(root) or (
            "contains white space, which would split it in the vhost" if re.search(r"\s", root) else None)
        if problem:
            raise self.fail(path, f"{root!r} {problem}")
        return root

    def hosts(self, t: Any, path: str) -> tuple[Host, ...]:
        if t.hosts is None:
            raise self.fail(f"{path}/hosts", "expected a non-empty list of hosts")
        hosts = []
        for i, h in enumerate(t.hosts):
            # `identity_file: null` on a host: none for it, whatever the target's.
            key = h.identity_file if "identity_file" in h.model_fields_set else t.identity_file
            hosts.append(Host(
                address=h.address,
                port=t.port if h.port is None else h.port,
                user=t.user if h.user is None else h.user,
                identity_file=None if key is None else self.file(key, f"{path}/hosts/{i}/identity_file",
                                                                  "connect"),
            ))
        seen = set()
        for i, h in enumerate(hosts):
            if h.name in seen:
                raise self.fail(f"{path}/hosts/{i}", f"duplicate host {h.name}")
            seen.add(h.name)
        return tuple(hosts)

    def vpn(self, v: Any, path: str) -> Vpn:
        if v.kind == "none":
            return Vpn()
        return Vpn(kind=v.kind, config=self.file(v.config, f"{path}/config", "connect"), timeout=float(v.timeout),
                   linger=float(v.linger))

    def apache(self, a: Any, path: str, transport: str) -> Apache:
        try:
            ctl = words(a.ctl)
        except ValueError as e:  # an unclosed quote
            raise self.fail(f"{path}/ctl", f"cannot be split into words: {e}") from None
        apache_dir = self.host_path(a.dir, f"{path}/dir", transport)
        if ctl == ("builtin",):
            if transport != "local":
                raise self.fail(f"{path}/ctl", "builtin is deployer's own Apache on this machine: only for"
                                " transport: local")
            # It writes its own config into that folder: never the system's.
            if os.path.realpath(apache_dir) == os.path.realpath("/etc/apache2") or not re.fullmatch(
                    r"[A-Za-z0-9_./+-]+", apache_dir):
                raise self.fail(f"{path}/dir", f"builtin needs a folder of its own for its config, such as"
                                f" .deployer-local/apache2 (letters, digits, . _ - + / only), not {apache_dir!r}")
            ctl = ("/bin/sh", str(LOCAL_APACHE_CTL), apache_dir)
        elif "/" in ctl[0]:
            # A path, e.g. tools/local-apache2ctl beside targets.yaml; a bare
            # name (apache2ctl, sudo) is looked up on the host's PATH.
            ctl = (self.host_path(ctl[0], f"{path}/ctl", transport), *ctl[1:])
        # It goes into Apache's config: each site's stub includes its vhost by path.
        problem = names.value_problem(apache_dir) or (
            "contains a quote, a backslash, a $ or white space, which Apache's config would read as more than"
            " a path" if re.search(r'["\\$\s]', apache_dir) else None)
        if problem:
            raise self.fail(f"{path}/dir", f"{apache_dir!r} {problem}")
        return Apache(dir=apache_dir, ctl=ctl, port=a.port, vhost_mode=a.vhost_mode,
                      vhost_owner=a.vhost_owner or "", vhost_group=a.vhost_group or "")

    def package(self, p: Any, path: str) -> Package:
        source = self.absolute(p.source)
        if self.check_environment and not os.path.isdir(source):
            self.lacks(f"{path}/source", f"directory not found: {source}", "source")
        return Package(source=source, exclude=tuple(p.exclude), include=tuple(p.include))

    def python(self, p: Any, path: str, transport: str) -> Python:
        interpreter = p.interpreter
        if transport == "ssh" and not interpreter.startswith("/"):
            raise self.fail(f"{path}/interpreter", f"expected an absolute path on the hosts, got {interpreter!r}")
        links = tuple(link if re.match(r"[a-z][a-z0-9+.-]*://", link) else self.absolute(link)
                      for link in p.find_links)
        if p.no_index and not links:
            raise self.fail(f"{path}/no_index", "with no index, find_links must name where the wheels are")
        return Python(requirements=self.file(p.requirements, f"{path}/requirements", "source"),
                      version=p.version, interpreter=interpreter, platform=p.platform,
                      index_url=p.index_url or "", find_links=links, no_index=p.no_index)

    def var(self, v: Any, path: str, name: str) -> Var:
        if v.env is None:
            return Var(v.value, v.secret, export=v.export)
        value = os.environ.get(v.env)
        if value is None and self.check_environment:
            self.lacks(f"{path}/env", f"environment variable {v.env} is not set", "value", name)
            # Only a dry run gets here: it shows where the value would go.
            value = f"<{v.env}: not set here>"
        problem = names.value_problem(value or "")
        if problem:
            raise self.fail(f"{path}/env", f"environment variable {v.env} {problem}")
        return Var(value or "", v.secret, v.env, v.export)
