"""pytest fixtures for the lab. Import them where needed:

    from tests.lab.fixtures import lab, lab_session, vpn  # noqa: F401

`lab` is one lab per test session (hosts: env DEPLOYER_LAB_HOSTS, default 2),
brought up on first use; `vpn` connects the runner to it for one test.
If another process (another test run) has a lab up, the session waits for
it, at most DEPLOYER_LAB_WAIT seconds (default 900).
Mark such tests `@pytest.mark.lab`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import Lab, VpnClient, up

# A lab that another test run owns is waited for, this long, then it fails:
# only one lab fits on a machine.
LAB_WAIT = float(os.environ.get("DEPLOYER_LAB_WAIT", "900"))

# The session's lab hangs off pytest's config, not this module, so that one
# lab serves even if this module is imported under two names
# (tests.lab.fixtures and lab.fixtures, depending on rootdir and sys.path).
_ATTR = "_deployer_lab_session"


class LabSession:
    """Holds the session's lab; a test that needs the machine to itself (or
    a bigger lab) can release it, and the next `get` brings a new one up."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.lab: Lab | None = None
        self._n = 0

    def get(self, hosts: int | None = None) -> Lab:
        hosts = hosts or int(os.environ.get("DEPLOYER_LAB_HOSTS", "2"))
        if self.lab is not None and len(self.lab.hosts) < hosts:
            self.release()
        if self.lab is None:
            self._n += 1
            self.lab = up(self.base / f"lab{self._n}", hosts, wait=LAB_WAIT)
        return self.lab

    def release(self) -> None:
        if self.lab is not None:
            lab, self.lab = self.lab, None
            lab.down()


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")


@pytest.fixture(scope="session")
def lab_session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    _require_root()
    existing = getattr(request.config, _ATTR, None)
    if existing is not None:
        yield existing
        return
    session = LabSession(tmp_path_factory.mktemp("deployer-lab"))
    setattr(request.config, _ATTR, session)
    try:
        yield session
    finally:
        session.release()
        delattr(request.config, _ATTR)


@pytest.fixture
def lab(lab_session: LabSession) -> Lab:
    return lab_session.get()


@pytest.fixture
def vpn(lab: Lab, tmp_path: Path) -> Iterator[VpnClient]:
    with lab.vpn_client(log=tmp_path / "openvpn-client.log") as client:
        yield client
