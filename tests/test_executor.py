"""The executor on the local transport: what it undoes, and what it never touches."""

import io
from datetime import UTC, datetime

import pytest

from deployer import context, plan
from deployer.config import load
from deployer.errors import StepFailed
from deployer.executor import Executor
from deployer.output import PlainReporter
from tests.conftest import armed_local_target, tree_digest


def _run(tmp_path, name="demo-acme"):
    targets = tmp_path / "targets.yaml"
    target = load(targets if targets.exists() else armed_local_target(tmp_path)).resolve(name)
    stages = plan.select(target.pipeline, (), ())
    ctx = context.make(name, f"{name}.example.com", target, {}, stages,
                       now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), workdir=str(tmp_path / "work"))
    out = io.StringIO()
    Executor(ctx, PlainReporter(out)).run(plan.build(ctx))
    return ctx, out.getvalue()


def test_an_existing_release_of_the_same_id_is_never_removed(tmp_path):
    # Two runs with the same release id (same second, same source): the
    # second fails to create the directory and must not roll back the first's.
    _run(tmp_path)
    before = tree_digest(tmp_path / "www")
    with pytest.raises(StepFailed, match="already exists; deployer will not touch another deploy's release"):
        _run(tmp_path)
    assert tree_digest(tmp_path / "www") == before

