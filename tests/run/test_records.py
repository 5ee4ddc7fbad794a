"""records.py: whether a run of this machine lives, from the runner's own state."""

import subprocess
import sys

from deployer.run import records

RUN = "0123456789abcdef"


def test_a_held_run_is_alive_a_released_one_is_unknown_a_killed_one_is_gone(tmp_path):
    registry = str(tmp_path / "registry")
    lock = records.RunLock(RUN, registry)
    assert records.alive(RUN, registry) is None
    lock.hold()
    assert records.alive(RUN, registry) > 0
    lock.release()
    assert records.alive(RUN, registry) is None  # ended as runs end: no trace
    # SIGKILL runs no teardown: the file stays, and nobody holds it.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from deployer.run import records;"
                               " records.RunLock(sys.argv[1], sys.argv[2]).hold(); print('held', flush=True);"
                               " time.sleep(60)", RUN, registry], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert records.alive(RUN, registry) == holder.pid
    finally:
        holder.kill()
        holder.wait(10)
    assert records.alive(RUN, registry) == 0


def test_what_is_not_a_run_id_is_never_a_run_of_ours(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o700)
    (registry / "run-..lock").write_text("")
    assert records.alive("..", str(registry)) is None
    assert records.alive("x|.*", str(registry)) is None


def test_a_run_that_could_not_release_a_hosts_lock_leaves_a_record_that_it_is_gone(tmp_path):
    registry = str(tmp_path / "registry")
    lock = records.RunLock(RUN, registry)
    lock.hold()
    lock.release(forget=False)
    assert records.alive(RUN, registry) == 0


def test_a_gone_runs_record_is_forgotten_once_dealt_with_a_live_ones_never(tmp_path):
    registry = str(tmp_path / "registry")
    lock = records.RunLock(RUN, registry)
    lock.hold()
    records.forget(RUN, registry)  # alive: kept
    assert records.alive(RUN, registry) > 0
    lock.release(forget=False)
    assert records.alive(RUN, registry) == 0
    records.forget(RUN, registry)
    # A lock a host writes in its name later is no run this machine can speak for.
    assert records.alive(RUN, registry) is None


def test_a_run_recorded_in_another_environments_registry_is_found(tmp_path):
    # A CI agent run as a service (no XDG_RUNTIME_DIR) records its runs in
    # ~/.local/state/deployer; the same user's SSH login has
    # /run/user/UID/deployer. Looked for only in its own, a live run read as
    # one this machine cannot speak for, and `unlock --yes` went on.
    service, login = str(tmp_path / "state"), str(tmp_path / "runtime")
    lock = records.RunLock(RUN, service)
    lock.hold()
    try:
        assert records.alive(RUN, login) is None  # its own registry alone, as before
        assert records.alive(RUN, login, elsewhere=[service]) > 0
    finally:
        lock.release(forget=False)
    assert records.alive(RUN, login, elsewhere=[service]) == 0


def test_the_other_registries_are_only_folders_of_this_users_own(tmp_path):
    from deployer.vpn.registry import elsewhere

    home = tmp_path / "home"
    state = home / ".local" / "state" / "deployer"
    state.mkdir(parents=True, mode=0o700)
    for d in (home, home / ".local", home / ".local" / "state"):
        d.chmod(0o755)
    runtime = tmp_path / "run-user"
    (runtime / "deployer").mkdir(parents=True, mode=0o700)
    runtime.chmod(0o700)
    found = elsewhere(environ={"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)})
    assert str(state) in found and str(runtime / "deployer") in found
    state.chmod(0o777)  # another user could plant a record there: not one of ours
    assert str(state) not in elsewhere(environ={"HOME": str(home)})
