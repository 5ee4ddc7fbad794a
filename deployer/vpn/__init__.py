"""The OpenVPN tunnel of a deploy, shared by every deploy on this machine
whose VPN config connects with the same certificate to the same servers
(tunnel_key: not the file's bytes, which two checkouts' copies need not
share).

Two build agents on one machine deploying two instances through one VPN
config must not each start a client: a second OpenVPN client with the same
certificate cuts off the first. So the first deploy starts a keeper (this
module's `keep`, in an isolated Python that imports nothing from the
config's folder), a small process of its own that runs OpenVPN, and every
deploy that uses the tunnel holds a shared flock on the tunnel's `users`
file for as long as it does. Deploys look for the keeper and start one
under the `setup` lock, one at a time, so two that start together start one
keeper; the keeper starts one OpenVPN at a time, and a deploy that finds a
gone keeper's OpenVPN still running stops it first. OpenVPN dies with its
keeper (`setpriv --pdeathsig`, from util-linux).

The tunnel counts as up only when OpenVPN's log says "Initialization
Sequence Completed" (its exit code proves nothing), and no restart of its
own came after, within the config's timeout. Until then the keeper starts
OpenVPN again when it exits, or when a start has not come up within a third
of the timeout (10 s at least): a point-to-point server that still holds
our last session may ignore a start for good. One that exits twice in a row
within a second of its start (it refuses its config) is not started again.
On UDP, OpenVPN is told to say goodbye when it stops (--explicit-exit-notify),
so that such a server lets go of us at once.

The keeper looks every half second: once nobody holds the users lock (the
last deploy ended, or was killed: the kernel releases a dead process's
locks), it keeps the tunnel up `linger` seconds more (as the newest deploy
said: targets.yaml's vpn/linger), for a next deploy to join, and then stops
OpenVPN and exits, whether or not any deploy lived to see it. With linger
0 the deploy that finds itself last stops the keeper at once and waits for
OpenVPN to be gone, so its routes are down when the deploy returns. A
tunnel that is not up, or that restarts while it lingers, is not kept.

A failed start quotes the end of OpenVPN's log, made printable; the log is
appended to (a start's lines stay for whoever looks after the next run),
and moved aside past 1 MiB. A tunnel to the hosts that is already up and
is not ours (a VPN the machine keeps) is used as it is and left up.

Relative file names in the config are its folder's (OpenVPN is given
--cd FOLDER).
The registry (a directory per user: /run/deployer-UID, else
$XDG_RUNTIME_DIR/deployer, else $XDG_STATE_HOME/deployer or
~/.local/state/deployer, never a name in a shared folder such as /tmp that
another user could take first; mode 0700, which must be ours and not a
link) holds per tunnel: `.users`, `.setup` (a lock while a deploy starts
or joins the keeper), `.state` (the keeper's and OpenVPN's pids, the
current start's place in the log), `.linger` (the newest deploy's linger)
and `.log` (OpenVPN's output and the keeper's, `.log.1` the one before).
"""

from deployer.vpn.identity import tunnel_key
from deployer.vpn.keeper import keep
from deployer.vpn.registry import private_dir, registry_dir
from deployer.vpn.tunnel import OpenVpnTunnel

__all__ = ["OpenVpnTunnel", "keep", "private_dir", "registry_dir", "tunnel_key"]
