"""A deployer stage, `revision`: a REVISION file in every new release, on every host.

It says what the release is and where it came from, for the app (a version
page, the release it reports to Sentry) and for whoever logs in to a host:

    # Written by the deployer revision stage for instance alpha; every release has its own.
    release=20260102T030405Z-0123456789ab
    revision=1a2b3c4d5e6f
    instance=alpha
    hostname=alpha.example.com
    deployed_by=ci@build1 (pid 4242, process ...)
    ci=TeamCity build Deploy alpha #57

`revision` is the git commit the source is checked out at, and `ci` the CI
build; either is `-` when there is none. The file lives in the release, so a
rollback to an older release brings that release's REVISION back with it.

A stage is a function from deployer's Context to steps; deployer runs them,
shows them in --dry-run, and undoes them if the deploy fails.
"""

import posixpath

from deployer.context import Context
from deployer.errors import UsageError
from deployer.steps import Install, Step

FILE = "REVISION"


def plan(ctx: Context) -> tuple[Step, ...]:
    # A run without upload (`--only render,restart`) has no new release: its
    # code path is the live release, which an earlier deploy made from other
    # code, and a REVISION written there would describe the wrong source.
    if not ctx.uploads:
        return ()
    # Caught while planning, before any host is touched: on the host, Install
    # would refuse to replace a file it did not write, but only mid-deploy.
    if ctx.manifest is not None and any(p == FILE or p.startswith(f"{FILE}/") for p in ctx.manifest.files):
        raise UsageError(f"{ctx.target.package.source} has its own {FILE}: the revision stage would replace it"
                         f" in the release; remove it from the source, or the stage from the pipeline")
    fields = {
        "release": ctx.release,
        "revision": ctx.revision or "-",
        "instance": ctx.name,
        "hostname": ctx.hostname,
        "deployed_by": ctx.who,
        "ci": ctx.ci or "-",
    }
    # Install only ever replaces a file whose first line is this mark, never one deployer did not write.
    mark = f"# Written by the deployer revision stage for instance {ctx.name}; every release has its own."
    content = "".join([f"{mark}\n", *(f"{key}={_one_line(value)}\n" for key, value in fields.items())])
    return (
        # Install, not a shell command: the content goes to the host on the
        # command's standard input, so no value is ever shell text, and the
        # file is written atomically (a new file renamed into place). If the
        # deploy fails, the undo removes it, as it removes the whole release.
        Install(f"write {FILE} into release {ctx.release}", ctx.host_names,
                path=posixpath.join(ctx.release_path, FILE), content=content, mark=mark,
                # Readable by the app, whichever user its WSGI daemon runs as.
                mode=0o644,
                # Beside the file, named per run, like deployer's own: what the undo needs until the run ends.
                work=posixpath.join(ctx.release_path, f".{FILE}.deployer-{ctx.run_id}")),
    )


def _one_line(text: str) -> str:
    # A CI build name can hold a newline or a tab; each field must stay one `key=value` line.
    return " ".join(text.split())
