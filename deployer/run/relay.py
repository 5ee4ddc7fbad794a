"""The tunnel crossed once: what the runner holds while the other hosts read
the artifact from the first one (see `steps.Relay` and remote/sh/fetch.sh).

The VPN is the narrow pipe; the private network behind it is fast. So the
first host keeps a copy of the tarball as it unpacks it, and a one-time
key, made here for this deploy and never written on the runner, may run
`cat` of that copy there and nothing else. Every other host that would be
sent the same tarball is given the key and the first host's host key as
our known_hosts has it, reads the copy over SSH and checks its sha256
against the runner's. Anything that goes wrong there (no ssh client, a
firewall between hosts, an sshd that does not read ~/.ssh/authorized_keys)
only means that host is sent the tarball through the tunnel after all.
"""

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployer import steps

# Smaller tarballs go through the tunnel: reading from the first host costs
# an SSH connection between hosts and waiting until the first host has
# unpacked, more than 1 MiB takes at office-uplink speeds (0.1 s at 100 Mbit/s).
MIN_SIZE = 1 << 20
# The name under which a host knows the first host's key (ssh's HostKeyAlias).
ALIAS = "deployer-relay"
# Seconds a host waits for its turn to read from the first host before the
# runner sends it the artifact instead (at most half the step's limit: the
# fetch's is twice the step's, and its read takes up to one).
TURN_WAIT = 60.0


@dataclass
class Offer:
    """One deploy's relay, as the runner sees it."""

    plan: steps.Relay
    private: bytes = field(repr=False, default=b"")
    public: str = ""
    # The tarball the source keeps: None until its input is made, "" if it keeps none.
    path: str | None = None
    # Whether the other hosts may read it: None until the source has unpacked.
    open: bool | None = None
    asked: set[str] = field(default_factory=set)  # hosts whose fetch has ended
    reading: set[str] = field(default_factory=set)  # hosts told to read it, whose fetch has not ended
    # Hosts waiting for their turn to read, in the order they came, since when (monotonic seconds).
    waiting: dict[str, float] = field(default_factory=dict)
    fetched: set[str] = field(default_factory=set)  # those that read the copy from the source

    @classmethod
    def make(cls, plan: steps.Relay) -> "Offer":
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        return cls(plan, private, public)

    def give_up(self) -> None:
        """The source's session ended: whatever was not decided will not be."""
        if self.path is None:
            self.path = ""
        if self.open is None:
            self.open = False
