"""deployer against the old bash script's way (scp + one ssh per command), in the lab.

    python -m bench.lab_deploy [--hosts 1,2,4] [--rounds 3]

Needs root and the lab's packages (see .ci/run). Brings a lab up, opens its
VPN once, then times, for each host count, a whole deploy of the example app
with `deploy --skip vpn` and with a shell loop doing the same work the way
the old TeamCity script did: tar, then per host scp and one ssh per command.
Prints the median of each and their ratio, measured in the same run, so the
ratio holds on a noisy 2-core machine where absolute seconds do not.
"""

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.lab.lab import REPO, up

OLD_SCRIPT = r"""
set -eu
name=$1; hostname=$2; release=$3; shift 3
ssh="ssh -q -i $KEY -o UserKnownHostsFile=$KNOWN -o StrictHostKeyChecking=yes -o BatchMode=yes"
scp="scp -q -i $KEY -o UserKnownHostsFile=$KNOWN -o StrictHostKeyChecking=yes -o BatchMode=yes"
rel=/var/www/$name.releases/$release
tar -czf "$WORK/app.tgz" -C "$APP" --exclude=__pycache__ .
sed -e "s|<<HOSTNAME>>|$hostname|g" -e "s|<<DEPLOY_PATH>>|/var/www/$name|g" \
    -e "s|<<CONFIG_NAME>>|$name|g" "$TEMPLATE" > "$WORK/vhost.conf"
for h in "$@"; do
    $scp "$WORK/app.tgz" "root@$h:/tmp/$release.tgz"
    $ssh "root@$h" "mkdir -p $rel && tar -xzf /tmp/$release.tgz -C $rel && rm /tmp/$release.tgz"
    $scp "$WORK/vhost.conf" "root@$h:/etc/apache2/sites-available/$name.conf"
    $ssh "root@$h" "ln -sfn ../sites-available/$name.conf /etc/apache2/sites-enabled/$name.conf"
done
$ssh "root@$1" "cd $rel && CONFIG_NAME=$name python manage.py migrate --noinput" >/dev/null
for h in "$@"; do
    $ssh "root@$h" "apache2ctl configtest 2>/dev/null && ln -sfn $rel /var/www/$name.tmp \
        && mv -T /var/www/$name.tmp /var/www/$name && apache2ctl graceful"
done
"""


def timed(argv: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, timeout=600)
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="1,2,4")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="deployer-bench-"))
    lab = up(work / "lab", max(counts))
    try:
        with lab.vpn_client(log=work / "vpn.log"):
            print(f"{'hosts':>5} {'deployer s':>11} {'old script s':>13} {'ratio':>6}")
            for n in counts:
                targets = work / f"targets-{n}.yaml"
                doc = lab.targets(hosts=lab.addresses[:n])
                targets.write_text(yaml.safe_dump(doc))
                env = {"KEY": str(lab.ssh_key), "KNOWN": str(lab.known_hosts), "WORK": str(work),
                       "APP": str(REPO / "examples" / "djangoapp"),
                       "TEMPLATE": str(REPO / "templates" / "default_template"), "PATH": "/usr/bin:/bin"}
                ours, theirs = [], []
                for r in range(args.rounds):
                    ours.append(timed([sys.executable, "-m", "deployer", "bench", "bench.example.test",
                                       "--targets", str(targets), "--skip", "vpn", "--output", "plain"]))
                    theirs.append(timed(["bash", "-c", OLD_SCRIPT, "old", "old", "old.example.test",
                                         f"r{n}-{r}", *lab.addresses[:n]], env=env))
                a, b = statistics.median(ours), statistics.median(theirs)
                print(f"{n:>5} {a:>11.2f} {b:>13.2f} {a / b:>6.2f}")
    finally:
        lab.down()
        subprocess.run(["rm", "-rf", "--", str(work)], check=False)
    print("ratio = deployer / old script (median of", args.rounds, "rounds; below 1 is faster)")
    print("command:", shlex.join(["python", "-m", "bench.lab_deploy", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
