"""The executor on the local transport: what it undoes, and what it never touches."""

import io
from datetime import UTC, datetime

import pytest

from deployer import context
from deployer.config import load
from deployer.errors import StepFailed
from deployer.output import PlainReporter
from deployer.plan import pipeline
from deployer.run.executor import Executor
from tests.conftest import armed_local_target, tree_digest


def _run(tmp_path, name="demo-acme"):
    targets = tmp_path / "targets.yaml"
    target = load(targets if targets.exists() else armed_local_target(tmp_path)).resolve(name)
    stages = pipeline.select(target.pipeline, (), ())
    ctx = context.make(name, f"{name}.example.com", target, {}, stages,
                       now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), workdir=str(tmp_path / "work"))
    out = io.StringIO()
    Executor(ctx, PlainReporter(out)).run(pipeline.build(ctx))
    return ctx, out.getvalue()


def test_an_existing_release_of_the_same_id_is_never_removed(tmp_path):
    # Two runs with the same release id (same second, same source): the
    # second fails to create the directory and must not roll back the first's.
    _run(tmp_path)
    before = tree_digest(tmp_path / "www")
    with pytest.raises(StepFailed, match="already exists; deployer will not touch another deploy's release"):
        _run(tmp_path)
    assert tree_digest(tmp_path / "www") == before



def _deploy_at(tmp_path, minute, name="demo-acme"):
    target = load(tmp_path / "targets.yaml").resolve(name)
    stages = pipeline.select(target.pipeline, (), ())
    ctx = context.make(name, f"{name}.example.com", target, {}, stages,
                       now=datetime(2026, 1, 2, 3, minute, tzinfo=UTC), workdir=str(tmp_path / f"work{minute}"))
    out = io.StringIO()
    Executor(ctx, PlainReporter(out)).run(pipeline.build(ctx))
    return ctx, out.getvalue()


def test_a_redeploy_and_a_new_instance_beside_send_only_what_changed_and_match_a_cold_deploy(tmp_path):
    armed_local_target(tmp_path)
    app = tmp_path / "app"
    for i in range(20):
        (app / f"m{i}.py").write_text(f"x = {i}\n" * 50)
    _deploy_at(tmp_path, 1)
    ctx, out = _deploy_at(tmp_path, 2)
    assert "21 files linked from the live release, 0 sent" in out
    (app / "m3.py").write_text("changed\n")
    ctx, out = _deploy_at(tmp_path, 3)
    assert "20 files linked from the live release, 1 sent" in out
    # The same tree as a new instance beside it, told to: every file linked from demo-acme's live release.
    targets = tmp_path / "targets.yaml"
    targets.write_text(targets.read_text().replace("defaults:", "defaults:\n  link_from_other_instances: true"))
    beside, out = _deploy_at(tmp_path, 4, name="demo-beside")
    assert "21 files linked from the live release of demo-acme, 0 sent" in out
    # And cold, with no other instance's release to start from: every file sent.
    for made in (ctx, beside):
        (tmp_path / "www" / made.name).unlink()
    cold, out = _deploy_at(tmp_path, 5, name="demo-cold")
    assert "0 files linked from the live release, 21 sent" in out
    trees = [tree_digest(tmp_path / "www" / f"{c.name}.releases" / c.release) for c in (ctx, beside, cold)]
    for tree in trees:
        del tree[".deployer-release-id"]  # the run that made it
        del tree[".deployer-vhost"]  # the instance's own vhost
    assert trees[0] == trees[1] == trees[2] and "m3.py" in trees[0]
