"""Fleet speed: deployer against the old bash loop, Ansible and pyinfra, in the lab.

    python -m bench.lab_deploy [--hosts 1,4,16] [--rounds 3] [--shape 100mbit]
        [--contenders deployer,loop,parallel,ansible,ansible-tuned,pyinfra,floor] [--kinds cold,demo,warm]

Needs root and the lab's packages (see .ci/run; python3-django for the app's
ballast); Ansible and pyinfra are installed on first use, each into a venv of
its own (/var/tmp/deployer-bench-ansible, `pip install ansible-core`;
/var/tmp/deployer-bench-pyinfra, `pip install 'pyinfra>=3,<4'`): bench-only,
neither is a dependency of deployer. Brings a lab with the largest host
count up, opens its VPN once, builds a real-sized app (bench/app.py:
examples/djangoapp plus Django's source, about 21 MB in 3,500 files), then,
for each host count and kind, times each contender on the same app, round
by round (contenders take turns within a round):

  deployer       `python -m deployer NAME NAME.example.test --targets T --skip vpn`
  loop           the old TeamCity script: tar, then per host scp and one ssh per command
  parallel       the same script with every host at once: each host's commands in a background
                 subshell, for the upload loop and the restart loop (migrate once between them);
                 plain OpenSSH, no ControlMaster
  ansible        one playbook doing the same steps, at Ansible's defaults (forks 5, no pipelining)
  ansible-tuned  the same playbook with forks = hosts, pipelining, ControlPersist 300s, no ssh -C
  pyinfra        one pyinfra 3 deploy file doing the playbook's steps, at pyinfra's defaults
                 (its ssh connector, paramiko; parallel = min(20 x CPUs, hosts); sftp), `pyinfra -y`
  floor          the lab's lower bound: one plain ssh per host, all at once, that switches the live
                 link to a release already on the host and runs `apache2ctl graceful`; nothing sent

  cold  an instance name the hosts have never seen (a fresh one every round), on hosts that hold no
        other instance of the app
  demo  the same, on hosts that run another instance of the app (a demo beside staging), which the
        contender deployed just before (untimed; the parallel script for the floor's); deployer's
        targets.yaml says `link_from_other_instances: true` for its catch-all, so it starts from
        that instance's files; the others (and a baseline from before it) never do
  warm  the contender's own instance, deployed just before (untimed), then one file changed

Each turn runs on hosts that hold only that contender's instances: after it,
every instance of the turn is taken off the hosts (untimed). So no
contender's graceful reload restarts another's daemons (a reload restarts
every instance's), and the lab's memory holds at 64 hosts. Within a round
the contenders take turns in another order each round.

Each run is timed until every host serves the new release (the command's
own time, then polling /health every 0.1 s): a graceful reload returns
before Apache has reloaded, and the app loads after that.
Every deploy changes RELEASE.txt, and counts only if every host then serves
that text from /health of NAME.example.test, through Apache and mod_wsgi.
The floor sends nothing: before each of its runs, untimed, the `parallel`
script deploys the release, then every host is switched to a copy of it
that says another release, and seen to serve that. Its timed run switches
back and reloads; its clock, too, stops when every host serves the release.
Cold and warm floors are the same run, the same lower bound: the switch and
reload every deploy ends with, on every host at once.

With --shape RATE, every row is run again with the VPN host's outer link
shaped to RATE (tbf). Absolute seconds are noisy on a small machine; the
ratios come from one run, contenders interleaved, so they hold better.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import app as benchapp
from tests.lab.lab import REPO, Lab, up

CONTENDERS = ("deployer", "loop", "parallel", "ansible", "ansible-tuned", "pyinfra", "floor")
SHORT = {"deployer": "dep", "loop": "loop", "parallel": "par", "ansible": "ans", "ansible-tuned": "anst",
         "pyinfra": "pyi", "floor": "floor", "baseline": "base"}  # fmt: skip
KINDS = ("cold", "demo", "warm")
ANSIBLE_VENV = Path("/var/tmp/deployer-bench-ansible")
PYINFRA_VENV = Path("/var/tmp/deployer-bench-pyinfra")
TEMPLATE = REPO / "templates" / "default_template"
CHECK_TIMEOUT = 60.0  # seconds for every host to serve the new release
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HZ = os.sysconf("SC_CLK_TCK")

# What both loops do first, as the old script did: its arguments, the
# tarball and the vhost, made once on this machine.
LOOP_PROLOGUE = r"""
set -eu
name=$1; hostname=$2; release=$3; shift 3
ssh="ssh -q -i $KEY -o UserKnownHostsFile=$KNOWN -o StrictHostKeyChecking=yes -o BatchMode=yes"
scp="scp -q -i $KEY -o UserKnownHostsFile=$KNOWN -o StrictHostKeyChecking=yes -o BatchMode=yes"
rel=/var/www/$name.releases/$release
tar -czf "$WORK/app.tgz" -C "$APP" --exclude=__pycache__ .
sed -e "s|<<HOSTNAME>>|$hostname|g" -e "s|<<DEPLOY_PATH>>|/var/www/$name|g" \
    -e "s|<<CONFIG_NAME>>|$name|g" -e "s|<<HTTP_PORT>>|80|g" "$TEMPLATE" > "$WORK/vhost.conf"
"""

OLD_SCRIPT = LOOP_PROLOGUE + r"""for h in "$@"; do
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

# Waits for each background subshell of `pids` (host `hosts[i]`); fails,
# naming the hosts, if any failed. bash: errexit holds in a `( ... ) &`.
# Put into the scripts below at their line @WAIT_ALL@.
WAIT_ALL = r"""wait_all() {
    local failed=0 i
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { echo "error: $1 failed on ${hosts[$i]}"; failed=1; }
    done
    return $failed
}
"""

# The old script with every host at once (its per-host commands unchanged).
PARALLEL_SCRIPT = LOOP_PROLOGUE + r"""@WAIT_ALL@
pids=(); hosts=()
for h in "$@"; do
    (
        $scp "$WORK/app.tgz" "root@$h:/tmp/$release.tgz"
        $ssh "root@$h" "mkdir -p $rel && tar -xzf /tmp/$release.tgz -C $rel && rm /tmp/$release.tgz"
        $scp "$WORK/vhost.conf" "root@$h:/etc/apache2/sites-available/$name.conf"
        $ssh "root@$h" "ln -sfn ../sites-available/$name.conf /etc/apache2/sites-enabled/$name.conf"
    ) &
    pids+=($!); hosts+=("$h")
done
wait_all upload
$ssh "root@$1" "cd $rel && CONFIG_NAME=$name python manage.py migrate --noinput" >/dev/null
pids=(); hosts=()
for h in "$@"; do
    (
        $ssh "root@$h" "apache2ctl configtest 2>/dev/null && ln -sfn $rel /var/www/$name.tmp \
            && mv -T /var/www/$name.tmp /var/www/$name && apache2ctl graceful"
    ) &
    pids+=($!); hosts+=("$h")
done
wait_all restart
""".replace("@WAIT_ALL@\n", WAIT_ALL)

# The lower bound: the reload every deploy ends with, on every host at once.
FLOOR_SCRIPT = r"""
set -eu
name=$1; release=$3; shift 3
ssh="ssh -q -i $KEY -o UserKnownHostsFile=$KNOWN -o StrictHostKeyChecking=yes -o BatchMode=yes"
@WAIT_ALL@
pids=(); hosts=()
for h in "$@"; do
    $ssh "root@$h" "ln -sfn /var/www/$name.releases/$release /var/www/$name.tmp \
        && mv -T /var/www/$name.tmp /var/www/$name && apache2ctl graceful" &
    pids+=($!); hosts+=("$h")
done
wait_all graceful
""".replace("@WAIT_ALL@\n", WAIT_ALL)

# The playbook's steps as a pyinfra 3 deploy file. pyinfra runs the file
# once per host, all hosts at once, to collect each one's operations, then
# runs each operation on every host before the next; with -y, an
# operation's body runs only then. So the tarball is a local operation (on
# the runner; its time counts, as the others' packaging does) of the first
# host only, as migrate is, and every host's files.put waits for it.
PYINFRA_DEPLOY = r"""
import io
import json
import os

from pyinfra import host, local
from pyinfra.operations import files, python, server

v = json.loads(open(os.environ["BENCH_PYINFRA_VARS"]).read())
name, tarball = v["instance"], v["tarball"]
deploy_path = f"/var/www/{name}"
release_dir = f"/var/www/{name}.releases/{v['release']}"
remote_tarball = f"/tmp/{v['release']}.tgz"

with open(v["vhost_template"]) as f:
    vhost = (f.read().replace("<<HOSTNAME>>", v["hostname"]).replace("<<DEPLOY_PATH>>", deploy_path)
             .replace("<<CONFIG_NAME>>", name).replace("<<HTTP_PORT>>", "80"))

if host.name == v["first"]:
    python.call(name="tarball of the app, on this machine", function=local.shell,
                commands=f"tar -czf {tarball} -C {v['app']} --exclude=__pycache__ .")
files.put(name="tarball", src=tarball, dest=remote_tarball)
server.shell(name="unpack it into the release directory", commands=[
    f"mkdir -p {release_dir} && tar -xzf {remote_tarball} -C {release_dir} && rm {remote_tarball}"])
files.put(name="vhost", src=io.StringIO(vhost), dest=f"/etc/apache2/sites-available/{name}.conf")
files.link(name="enable the site", path=f"/etc/apache2/sites-enabled/{name}.conf",
           target=f"../sites-available/{name}.conf")
if host.name == v["first"]:
    server.shell(name="migrate, once",
                 commands=[f"cd {release_dir} && CONFIG_NAME={name} python manage.py migrate --noinput"])
server.shell(name="configtest", commands=["apache2ctl configtest"])
files.link(name="switch DEPLOY_PATH to the release", path=deploy_path, target=release_dir)
server.shell(name="graceful", commands=["apache2ctl graceful"])
"""

# The same steps as the loop and deployer; the tarball is built by the
# playbook itself, so its time counts as the others' packaging does.
PLAYBOOK = r"""
- name: package
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: tarball of the app
      ansible.builtin.command: tar -czf {{ tarball }} -C {{ app }} --exclude=__pycache__ .

- name: deploy
  hosts: web
  gather_facts: false
  vars:
    deploy_path: /var/www/{{ instance }}
    release_dir: /var/www/{{ instance }}.releases/{{ release }}
  tasks:
    - name: release directory
      ansible.builtin.file: {path: "{{ release_dir }}", state: directory, mode: "0755"}
    - name: unpack the tarball into it
      ansible.builtin.unarchive: {src: "{{ tarball }}", dest: "{{ release_dir }}"}
    - name: vhost
      ansible.builtin.copy:
        dest: /etc/apache2/sites-available/{{ instance }}.conf
        mode: "0640"
        content: "{{ lookup('file', vhost_template) | replace('<<HOSTNAME>>', hostname)
          | replace('<<DEPLOY_PATH>>', deploy_path) | replace('<<CONFIG_NAME>>', instance)
          | replace('<<HTTP_PORT>>', '80') }}\n"
    - name: enable the site
      ansible.builtin.file:
        {src: "../sites-available/{{ instance }}.conf", dest: "/etc/apache2/sites-enabled/{{ instance }}.conf",
         state: link, force: true}
    - name: migrate, once
      ansible.builtin.command: {cmd: python manage.py migrate --noinput, chdir: "{{ release_dir }}"}
      environment: {CONFIG_NAME: "{{ instance }}"}
      run_once: true
    - name: configtest
      ansible.builtin.command: apache2ctl configtest
    - name: switch DEPLOY_PATH to the release
      ansible.builtin.file: {src: "{{ release_dir }}", dest: "{{ deploy_path }}", state: link, force: true}
    - name: graceful
      ansible.builtin.command: apache2ctl graceful
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def retransmitted() -> int:
    """TCP segments sent again, in this (the runner's) network namespace, so far."""
    with open("/proc/net/snmp") as f:
        names, values = [line.split()[1:] for line in f if line.startswith("Tcp:")]
    return int(dict(zip(names, values, strict=True))["RetransSegs"])


def busy_cpu() -> float:
    """Seconds of busy CPU of the whole machine so far (all CPUs): user, nice,
    system, irq, softirq and steal from /proc/stat (guest time is in user)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)) / HZ


@dataclass
class Measured:
    code: int | None  # None: timed out, killed
    seconds: float
    cpu: float  # user + system seconds of the command's own process tree
    rss_kib: int  # peak RSS of its largest process


def run_measured(argv: list[str], *, env: dict, out: Path, timeout: float, cwd: Path | None = None) -> Measured:
    """Run argv in a session of its own; wait4 gives its tree's CPU and peak RSS."""
    with open(out, "ab") as f:
        started = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                             cwd=cwd, start_new_session=True)  # fmt: skip
    # Past the timeout: SIGTERM to its process group, SIGKILL 5 s later.
    signals = [(started + timeout, signal.SIGTERM), (started + timeout + 5, signal.SIGKILL)]
    killed = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        now = time.perf_counter()
        if signals and now > signals[0][0]:
            sig = signals.pop(0)[1]
            if not killed:
                log(f"    timed out after {timeout:.0f}s: stopping {argv[0]} (process group {p.pid})")
            killed = True
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        elif killed and not signals and now > started + timeout + 30:
            raise RuntimeError(f"{argv[0]} (pid {p.pid}) survives SIGKILL")
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measured(None if killed else p.returncode, seconds, ru.ru_utime + ru.ru_stime, ru.ru_maxrss)


@dataclass
class Run:
    seconds: float
    ok: bool
    error: str = ""
    sessions: float = 0.0  # per host, mean
    logins: float = 0.0
    tun_tx: int = 0  # bytes, runner -> hosts
    tun_rx: int = 0
    retrans: int = 0  # TCP segments the runner sent again (lost in the lab's OpenVPN)
    machine_cpu: float = 0.0  # busy CPU s of the whole machine during the run
    own_cpu: float = 0.0
    rss_kib: int = 0
    steps: dict[str, float] = field(default_factory=dict)  # deployer: slowest host per step title


STEP_LINE = re.compile(r"^\s+(.+?) \[(.+?)\]: (\S+) in ([\d.]+)s$")
RELEASE_ID = re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{6,}\b")


def deployer_steps(text: str, name: str, app: Path) -> dict[str, float]:
    """From deployer's plain output: each step's slowest host, seconds; titles
    with the instance, release and app path taken out, to compare rows."""
    steps: dict[str, float] = {}
    stage = ""
    for line in text.splitlines():
        if line.startswith("== "):
            stage = line[3:].strip()
        m = STEP_LINE.match(line)
        if m:
            title = RELEASE_ID.sub("REL", m[1].replace(str(app), "APP"))
            title = f"{stage}: " + re.sub(rf"\b{re.escape(name)}\b", "NAME", title)
            steps[title] = max(steps.get(title, 0.0), float(m[4]))
    return steps


class Bench:
    def __init__(self, lab: Lab, work: Path, app: Path, args: argparse.Namespace) -> None:
        self.lab, self.work, self.app, self.args = lab, work, app, args
        self.logs = work / "logs"
        self.logs.mkdir()
        self.tun = lab.tunnel_device()
        self.cp_dir = work / "cp"  # Ansible's ControlPersist sockets: closed after each run
        self.cp_dir.mkdir()
        self.seq = 0

    # -- the contenders

    def targets(self, n: int, contender: str) -> Path:
        path = self.work / f"targets-{n}-{contender}.yaml"
        if not path.exists():
            doc = self.lab.targets(self.app, hosts=self.lab.addresses[:n])
            # Deploys run with --skip vpn (the bench holds the tunnel open), and
            # a --baseline from before `linger` refuses the key.
            doc["defaults"]["vpn"].pop("linger", None)
            if contender == "deployer":
                # Its instances are demos (the catch-all): a new one starts from another's files.
                doc["targets"]["*"]["link_from_other_instances"] = True
            path.write_text(yaml.safe_dump(doc))
        return path

    def env(self) -> dict:
        return {"PATH": PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

    def command(self, contender: str, name: str, n: int, release: str) -> tuple[list[str], dict]:
        hostname = f"{name}.example.test"
        env = self.env()
        if contender in ("deployer", "baseline"):
            # The baseline: another checkout's deployer, from its own .venv (this code before a change).
            python = sys.executable
            if contender == "baseline":
                python = str(Path(self.args.baseline) / ".venv" / "bin" / "python")
            return [python, "-m", "deployer", name, hostname, "--targets", str(self.targets(n, contender)),
                    "--skip", "vpn", "--output", "plain"], env  # fmt: skip
        if contender in ("loop", "parallel", "floor"):
            script = {"loop": OLD_SCRIPT, "parallel": PARALLEL_SCRIPT, "floor": FLOOR_SCRIPT}[contender]
            env.update(KEY=str(self.lab.ssh_key), KNOWN=str(self.lab.known_hosts), WORK=str(self.work),
                       APP=str(self.app), TEMPLATE=str(TEMPLATE))  # fmt: skip
            return ["bash", "-c", script, contender, name, hostname, release, *self.lab.addresses[:n]], env
        if contender == "pyinfra":
            deploy, inventory = self.pyinfra_files(n)
            extra = self.work / f"vars-{self.seq}.json"
            extra.write_text(json.dumps({
                "instance": name, "hostname": hostname, "release": release, "app": str(self.app),
                "tarball": str(self.work / f"pyinfra-{self.seq}.tgz"), "vhost_template": str(TEMPLATE),
                "first": self.lab.addresses[0],
            }))  # fmt: skip
            env.update(BENCH_PYINFRA_VARS=str(extra))
            return [str(PYINFRA_VENV / "bin" / "pyinfra"), "-y", str(inventory), str(deploy)], env
        tuned = contender == "ansible-tuned"
        cfg = self.ansible_files(n, tuned)
        extra = self.work / f"vars-{self.seq}.json"
        extra.write_text(json.dumps({
            "instance": name, "hostname": hostname, "release": release, "app": str(self.app),
            "tarball": str(self.work / f"ansible-{self.seq}.tgz"), "vhost_template": str(TEMPLATE),
        }))  # fmt: skip
        env.update(ANSIBLE_CONFIG=str(cfg), ANSIBLE_HOME=str(self.work / "ansible-home"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_LOCAL_TEMP=str(self.work / "ansible-home" / "tmp"))  # fmt: skip
        return [str(ANSIBLE_VENV / "bin" / "ansible-playbook"), str(self.work / "deploy.yml"),
                "-e", f"@{extra}"], env  # fmt: skip

    def ansible_files(self, n: int, tuned: bool) -> Path:
        (self.work / "deploy.yml").write_text(PLAYBOOK)
        inv = self.work / f"inventory-{n}.ini"
        known = self.lab.known_hosts
        inv.write_text("[web]\n" + "".join(f"{a}\n" for a in self.lab.addresses[:n]) +
                       "[web:vars]\nansible_user=root\n"
                       f"ansible_ssh_private_key_file={self.lab.ssh_key}\n"
                       f"ansible_ssh_extra_args=-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes\n"
                       "ansible_python_interpreter=/usr/bin/python3\n")  # fmt: skip
        cfg = self.work / f"ansible-{'tuned' if tuned else 'defaults'}-{n}.cfg"
        lines = ["[defaults]", f"inventory = {inv}", "host_key_checking = True", "retry_files_enabled = False"]
        if tuned:
            lines.append(f"forks = {max(n, 5)}")
        lines += ["", "[ssh_connection]", f"control_path_dir = {self.cp_dir}"]
        if tuned:
            # Ansible's own default is "-C -o ControlMaster=auto -o ControlPersist=60s".
            lines += ["pipelining = True", "ssh_args = -o ControlMaster=auto -o ControlPersist=300s"]
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def pyinfra_files(self, n: int) -> tuple[Path, Path]:
        """The deploy file and an inventory of the first n hosts, in a directory of
        their own (pyinfra reads config.py and group_data/ next to them)."""
        d = self.work / "pyinfra"
        d.mkdir(exist_ok=True)
        deploy = d / "deploy.py"
        deploy.write_text(PYINFRA_DEPLOY)
        inv = d / f"inventory_{n}.py"
        known = str(self.lab.known_hosts)
        data = {"ssh_user": "root", "ssh_key": str(self.lab.ssh_key), "ssh_known_hosts_file": known,
                "ssh_strict_host_key_checking": "yes"}  # fmt: skip
        inv.write_text(f"_data = {data!r}\nweb = [(a, _data) for a in {self.lab.addresses[:n]!r}]\n")
        return deploy, inv

    def close_ssh_masters(self) -> None:
        """Stop Ansible's ControlPersist ssh masters (through their sockets), so
        that no round inherits a connection from the one before."""
        for sock in self.cp_dir.iterdir():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab"], capture_output=True,
                           timeout=15, check=False)  # fmt: skip
            sock.unlink(missing_ok=True)

    # -- one deploy, measured and checked

    def deploy(self, contender: str, name: str, n: int, release: str) -> Run:
        self.seq += 1
        benchapp.set_release(self.app, release)
        argv, env = self.command(contender, name, n, release)
        out = self.logs / f"{self.seq:03d}-{contender}-{name}.log"
        out.write_text(f"$ {shlex.join(argv)}\n")
        # Untimed: the lab's hosts live on this machine's disk, and a cold
        # deploy or a removal leaves hundreds of MB to write back, which
        # would slow whichever run comes next (and more with every round).
        os.sync()
        offsets = self.lab.ssh_log_offsets()
        rx0, tx0 = self.lab.tunnel_bytes(self.tun)
        re0 = retransmitted()
        cpu0 = busy_cpu()
        m = run_measured(argv, env=env, out=out, timeout=self.args.timeout, cwd=self.work)
        cpu1 = busy_cpu()
        rx1, tx1 = self.lab.tunnel_bytes(self.tun)
        re1 = retransmitted()
        if contender.startswith("ansible"):
            self.close_ssh_masters()
            (self.work / f"ansible-{self.seq}.tgz").unlink(missing_ok=True)
        (self.work / f"pyinfra-{self.seq}.tgz").unlink(missing_ok=True)
        text = out.read_text(errors="replace")
        run = Run(seconds=m.seconds, ok=m.code == 0, tun_tx=tx1 - tx0, tun_rx=rx1 - rx0, retrans=re1 - re0,
                  machine_cpu=cpu1 - cpu0, own_cpu=m.cpu, rss_kib=m.rss_kib)  # fmt: skip
        if contender in ("deployer", "baseline"):
            run.steps = deployer_steps(text, name, self.app)
        if m.code != 0:
            said = [line.strip() for line in text.splitlines() if line.startswith(("error:", "fatal:"))]
            run.error = ("timed out" if m.code is None else f"exit {m.code}") + (f": {said[-1]}" if said else "")
            tail = "\n".join(line[:300] for line in text.splitlines()[-15:])
            log(f"    FAILED ({run.error}), log {out}:\n{tail}")
        else:
            # The clock stops when every host serves the release, not when the
            # command returns: `apache2ctl graceful` returns before Apache has
            # reloaded, and a daemon loads the app after that.
            started = time.perf_counter()
            bad = self.check(name, n, release)
            run.seconds += time.perf_counter() - started
            if bad:
                run.ok, run.error = False, f"check: {bad[0]}"
                log(f"    CHECK FAILED on {len(bad)} host(s): {bad[:3]} (log {out})")
        # sshd logs a session as it starts: all are in by now.
        run.sessions = sum(self.lab.ssh_sessions(offsets)[:n]) / n
        run.logins = sum(self.lab.ssh_logins(offsets)[:n]) / n
        return run

    def turn(self, contender: str, kind: str, n: int, r: int, tag: str) -> Run:
        """One timed deploy of `kind` by `contender`, on hosts that hold its
        instances only: the one it starts beside (demo) or from (warm) is
        deployed just before, untimed, and every instance of the turn is
        taken off after. So no contender's graceful reload restarts another's
        daemons, and the lab's memory holds at 64 hosts."""
        own = f"{kind[0]}{tag}-{SHORT[contender]}-{n}"
        name = own if kind == "warm" else f"{own}-{r}"
        release = f"{kind}-{contender}-{n}-{r}-{tag}-{time.time_ns()}"
        # The floor stages its warm release itself (below); its demo's other
        # instance is the parallel script's, as the floor cannot deploy.
        first = kind == "demo" or (kind == "warm" and contender != "floor")
        by = "parallel" if contender == "floor" else contender
        if first:
            log(f"    untimed: first deploy of {own} ({by})")
            before = self.deploy(by, own, n, f"first-{own}-{r}")
            if not before.ok:
                log(f"    first deploy of {own} failed: {before.error}")
        try:
            failed = ""
            if contender == "floor":
                # It sends nothing: the release is put on the hosts first, untimed.
                log(f"    untimed: {release} of {name} staged on every host, for the floor")
                failed = self.stage_floor(name, n, release)
            if failed:
                return Run(seconds=0.0, ok=False, error=failed)
            return self.deploy(contender, name, n, release)
        finally:
            for gone in dict.fromkeys((name, own) if first else (name,)):
                self.remove(gone, n)

    def check(self, name: str, n: int, release: str) -> list[str]:
        """Hosts that do not serve `release` of `name` (after a bounded wait:
        a graceful restart lets the old config answer for a moment)."""

        def one(i: int) -> str | None:
            deadline = time.monotonic() + CHECK_TIMEOUT
            seen = ""
            while time.monotonic() < deadline:
                try:
                    status, _, body = self.lab.http_get(i, "/health", host=f"{name}.example.test", timeout=20)
                    info = json.loads(body) if status == 200 else {}
                    if info.get("instance") == name and info.get("release") == release:
                        return None
                    seen = f"{status} {body[:120]!r}"
                except (OSError, ValueError) as e:
                    seen = repr(e)
                time.sleep(0.1)
            return f"{self.lab.addresses[i]}: {seen}"

        # Every host at once: a host waiting for another's turn would add to the clock.
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            return [r for r in pool.map(one, range(n)) if r]

    def stage_floor(self, name: str, n: int, release: str) -> str:
        """For the floor's run: `release` of `name` on every host, not live.
        It is deployed by the parallel script (untimed), then each host
        switched to a copy of it that says another release, and seen to
        serve that; "" if all went so, else what did not."""
        setup = self.deploy("parallel", name, n, release)
        if not setup.ok:
            return setup.error
        rel = f"/var/www/{name}.releases/{release}"
        script = (f"rm -rf {rel}-pre && cp -a {rel} {rel}-pre && echo {release}-pre > {rel}-pre/RELEASE.txt"
                  f" && ln -sfn {rel}-pre /var/www/{name}.tmp && mv -T /var/www/{name}.tmp /var/www/{name}"
                  " && apache2ctl graceful")  # fmt: skip
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            done = list(pool.map(lambda i: self.lab.run(i, script, check=False, timeout=120), range(n)))
        failed = [f"{self.lab.addresses[i]}: {d.stderr.strip()[-200:]}" for i, d in enumerate(done)
                  if d.returncode]
        bad = failed or self.check(name, n, f"{release}-pre")
        return f"floor's setup: {bad[0]}" if bad else ""

    def remove(self, name: str, n: int) -> None:
        """Take an instance off the hosts (untimed), so the lab does not fill
        up with releases and mod_wsgi daemons."""
        script = (f"rm -rf /var/www/{name} /var/www/{name}.* /var/www/.{name}[.-]* "
                  f"/etc/apache2/sites-enabled/{name}.conf /etc/apache2/sites-available/{name}.conf "
                  f"/etc/apache2/sites-*/.{name}* && apache2ctl graceful")  # fmt: skip
        def one(i: int) -> None:
            try:
                self.lab.run(i, script, check=False, timeout=60)
            except subprocess.TimeoutExpired:
                # A host too loaded to answer (out of memory at 64 hosts): the
                # runs so far still get their report, the lab goes down after.
                log(f"    removing {name} from host {i} took over 60 s; left there")

        with concurrent.futures.ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
            list(pool.map(one, range(n)))
        (self.lab.shared_dir / f"{name}.sqlite3").unlink(missing_ok=True)


# ------------------------------------------------------------- one-off numbers


PACKAGING = r"""
import hashlib, sys, tempfile, time
from pathlib import Path
from deployer.artifact.packaging import Rules, build
app = sys.argv[1]
rules = Rules(exclude=("__pycache__", "*.pyc"))
with tempfile.TemporaryDirectory() as d:
    times, digests, sizes = [], [], []
    for i in range(2):
        dest = Path(d, f"app{i}.tgz")
        t = time.perf_counter()
        build(app, rules, str(dest))
        times.append(time.perf_counter() - t)
        digests.append(hashlib.sha256(dest.read_bytes()).hexdigest())
        sizes.append(dest.stat().st_size)
print(f"{times[0]:.2f} s, {times[1]:.2f} s; {sizes[0] / 1e6:.2f} MB; byte-identical: "
      f"{'yes' if digests[0] == digests[1] else 'NO'}")
"""


def packaging_time(app: Path) -> str:
    try:
        r = subprocess.run([sys.executable, "-c", PACKAGING, str(app)], capture_output=True, text=True,
                           timeout=300, cwd=REPO)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timed out (300 s)"
    if r.returncode != 0:
        return "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return r.stdout.strip()


def dry_run_time(lab: Lab, app: Path, work: Path, hosts: int) -> str:
    fake = [f"198.18.{3 + i // 250}.{1 + i % 250}" for i in range(hosts)]
    targets = work / f"targets-dry-{hosts}.yaml"
    targets.write_text(yaml.safe_dump(lab.targets(app, hosts=fake)))
    argv = [sys.executable, "-m", "deployer", "dry", "dry.example.test", "--targets", str(targets),
            "--dry-run", "--output", "plain"]  # fmt: skip
    started = time.perf_counter()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=work)
    except subprocess.TimeoutExpired:
        return "timed out (300 s)"
    seconds = time.perf_counter() - started
    if r.returncode != 0:
        return f"exit {r.returncode}: " + (r.stdout + r.stderr).strip()[-200:]
    return f"{seconds:.2f} s ({len(r.stdout.splitlines())} lines)"


def ensure_ansible() -> None:
    playbook = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if playbook.exists():
        return
    log(f"installing ansible-core into {ANSIBLE_VENV} ...")
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(ANSIBLE_VENV)], check=True, timeout=120)
    subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"], check=True, timeout=600)
    if not playbook.exists():
        raise SystemExit(f"no {playbook} after pip install ansible-core")


def ensure_pyinfra() -> None:
    binary = PYINFRA_VENV / "bin" / "pyinfra"
    if binary.exists():
        return
    log(f"installing pyinfra 3 into {PYINFRA_VENV} ...")
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(PYINFRA_VENV)], check=True, timeout=120)
    subprocess.run([str(PYINFRA_VENV / "bin" / "pip"), "install", "-q", "pyinfra>=3,<4"], check=True, timeout=600)
    if not binary.exists():
        raise SystemExit(f"no {binary} after pip install pyinfra")


# -------------------------------------------------------------------- the table


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def median(runs: list[Run], attr: str) -> float | None:
    ok = [getattr(r, attr) for r in runs if r.ok]
    return statistics.median(ok) if ok else None


def report(results: dict, args: argparse.Namespace, extra: list[str]) -> None:
    contenders = args.contenders
    print()
    print("Median wall seconds of a whole deploy (package, upload, render, migrate, restart; VPN already up),")
    print(f"over {args.rounds} round(s); ok/rounds where a run failed. Ratios: X/dep, the other's median /")
    print("deployer's (above 1: deployer is faster); dep/floor, deployer's / the floor's (the reload alone, every")
    print("host at once: the lab's lower bound); dep/base, deployer's / the baseline's.")
    widths = {c: max(len(c), 7) for c in contenders}
    head = f"{'shape':>8} {'hosts':>5} {'kind':>4} " + " ".join(f"{c:>{widths[c]}}" for c in contenders)
    # (label, numerator, denominator)
    ratios: list[tuple[str, str, str]] = []
    if "deployer" in contenders:
        others = [c for c in contenders if c not in ("deployer", "floor", "baseline")]
        ratios = [(f"{SHORT[c]}/dep", c, "deployer") for c in others]
        ratios += [(f"dep/{SHORT[c]}", "deployer", c) for c in ("floor", "baseline") if c in contenders]
    head += "".join(f" {label:>{max(len(label), 6)}}" for label, _, _ in ratios)
    print(head)
    for (shape, n, kind), by in results.items():
        cells = []
        for c in contenders:
            runs = by.get(c, [])
            m = median(runs, "seconds")
            ok = sum(r.ok for r in runs)
            cells.append(f"{fmt(m) + ('' if ok == len(runs) else f' {ok}/{len(runs)}'):>{widths[c]}}")
        line = f"{shape or 'none':>8} {n:>5} {kind:>4} " + " ".join(cells)
        for label, num, den in ratios:
            a, b = median(by.get(num, []), "seconds"), median(by.get(den, []), "seconds")
            line += f" {fmt(a / b if a and b else None):>{max(len(label), 6)}}"
        print(line)

    print()
    print("Per contender, medians over the rounds that passed. ssh conn and sessions: per host, from each sshd's")
    print("log (logins; session channels: exec, sftp). tun MB: payload through the runner's tun device, up/down,")
    print("retransmissions included; retr: TCP segments the runner sent again (the lab's OpenVPN drops UDP when")
    print("the CPU is busy, or at the shaped rate), each up to 1448 bytes of the tun MB up.")
    print("CPU s/host: busy CPU time of the whole machine (runner, OpenVPN both ends, sshd, tar, Apache on every")
    print("lab host; /proc/stat user+nice+system+irq+softirq+steal) during the deploy, divided by hosts.")
    print("own CPU s: user+sys of the contender's own process tree on the runner (own ms/host: the same, in ms,")
    print("divided by hosts); RSS MB: its largest process.")
    print(f"{'shape':>8} {'hosts':>5} {'kind':>4} {'contender':>13} {'s':>7} {'conn':>5} {'sess':>5} "
          f"{'tun MB up':>9} {'down':>6} {'retr':>5} "
          f"{'CPU s/host':>10} {'own CPU s':>9} {'own ms/host':>11} {'RSS MB':>7}")  # fmt: skip
    for (shape, n, kind), by in results.items():
        for c in contenders:
            runs = by.get(c, [])
            if not runs:
                continue
            rss = max((r.rss_kib for r in runs if r.ok), default=None)
            tx, rx = median(runs, "tun_tx"), median(runs, "tun_rx")
            mcpu, own = median(runs, "machine_cpu"), median(runs, "own_cpu")
            print(f"{shape or 'none':>8} {n:>5} {kind:>4} {c:>13} {fmt(median(runs, 'seconds')):>7} "
                  f"{fmt(median(runs, 'logins'), '.0f'):>5} {fmt(median(runs, 'sessions'), '.0f'):>5} "
                  f"{fmt(tx and tx / 1e6, '.2f'):>9} {fmt(rx and rx / 1e6, '.2f'):>6} "
                  f"{fmt(median(runs, 'retrans'), '.0f'):>5} "
                  f"{fmt(mcpu and mcpu / n):>10} {fmt(own):>9} {fmt(own and own * 1000 / n, '.0f'):>11} "
                  f"{fmt(rss and rss / 1024, '.0f'):>7}")  # fmt: skip

    if "deployer" in contenders:
        print()
        print("deployer's steps (its plain output): the slowest host's seconds per step, median over the rounds;")
        print("steps under 0.05 s left out")
        for (shape, n, kind), by in results.items():
            runs = [r for r in by.get("deployer", []) if r.ok and r.steps]
            if not runs:
                continue
            titles = list(dict.fromkeys(t for r in runs for t in r.steps))
            medians = {t: statistics.median(r.steps.get(t, 0.0) for r in runs) for t in titles}
            cells = [f"{t} {s:.2f}" for t, s in medians.items() if s >= 0.05]
            print(f"{shape or 'none':>8} {n:>5} {kind:>4}  " + "; ".join(cells))
    failed = [(key, c, r.error) for key, by in results.items() for c, runs in by.items() for r in runs if not r.ok]
    if failed:
        print()
        print("failed runs:")
        for (shape, n, kind), c, error in failed:
            print(f"  shape {shape or 'none'} hosts {n} {kind} {c}: {error[:200]}")
    print()
    for line in extra:
        print(line)


# ------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="1,4,16", help="host counts, comma-separated (default 1,4,16)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shape", metavar="RATE", help="run every row shaped to RATE too (tc units, e.g. 100mbit)")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--timeout", type=float, default=900, help="seconds one deploy may take (default 900)")
    p.add_argument("--wait", type=float, default=900, help="seconds to wait for another run's lab to go")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, app)")
    p.add_argument("--baseline", metavar="DIR", help="also time the deployer of the checkout DIR (its .venv),"
                   " taking turns with this one: a change measured against main in one run")
    args = p.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    args.contenders = [c for c in args.contenders.split(",") if c]
    kinds = [k for k in args.kinds.split(",") if k]
    if args.baseline:
        if not (Path(args.baseline) / ".venv" / "bin" / "python").exists():
            p.error(f"--baseline {args.baseline}: no .venv/bin/python there")
        if "baseline" not in args.contenders:
            args.contenders.append("baseline")
    elif "baseline" in args.contenders:
        p.error("the contender baseline needs --baseline DIR")
    unknown = set(args.contenders) - set(CONTENDERS) - {"baseline"} | set(kinds) - set(KINDS)
    if unknown or not counts or min(counts) < 1 or args.rounds < 1:
        p.error(f"unknown {sorted(unknown)}" if unknown else "bad --hosts or --rounds")
    shapes: list[str | None] = [None] + ([args.shape] if args.shape else [])
    command = shlex.join(["python", "-m", "bench.lab_deploy", *sys.argv[1:]])
    # Stopped with SIGTERM, it still takes its lab, VPN client and work
    # directory down (Python's default would end it without `finally`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if any(c.startswith("ansible") for c in args.contenders):
        ensure_ansible()
    if "pyinfra" in args.contenders:
        ensure_pyinfra()
    work = Path(tempfile.mkdtemp(prefix="deployer-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    started = time.monotonic()
    results: dict[tuple[str | None, int, str], dict[str, list[Run]]] = {}
    extra: list[str] = []
    lab = None
    try:
        log(f"building the app in {work} ...")
        app = benchapp.build(work)
        files, size = benchapp.size(app)
        extra.append(f"app: examples/djangoapp + Django's source as ballast, {files} files, {size / 1e6:.1f} MB")
        log("packaging ...")
        extra.append(f"deployer.artifact.packaging.build of the app, twice: {packaging_time(app)}")
        log(f"lab up, {max(counts)} hosts ...")
        t = time.monotonic()
        lab = up(work / "lab", max(counts), wait=args.wait)
        extra.append(f"lab up with {max(counts)} hosts: {time.monotonic() - t:.1f} s (with any wait for another "
                     f"run's lab to go); this machine: {os.cpu_count()} CPUs")  # fmt: skip
        for hosts in (16, 200):
            extra.append(f"deploy --dry-run, {hosts} hosts: {dry_run_time(lab, app, work, hosts)}")
        with lab.vpn_client(log=work / "vpn.log"):
            bench = Bench(lab, work, app, args)
            total = len(shapes) * len(counts) * len(kinds) * args.rounds * len(args.contenders)
            done = 0
            for shape in shapes:
                lab.shape(shape)
                tag = "s" if shape else "u"
                for n in counts:
                    for kind in kinds:
                        by: dict[str, list[Run]] = {c: [] for c in args.contenders}
                        results[(shape, n, kind)] = by
                        for r in range(args.rounds):
                            # Taking turns in another order each round: whoever goes after a
                            # cold deploy pays for its disk's write-back.
                            k = r % len(args.contenders)
                            for c in args.contenders[k:] + args.contenders[:k]:
                                done += 1
                                run = bench.turn(c, kind, n, r, tag)
                                by[c].append(run)
                                log(f"[{done}/{total} {time.monotonic() - started:.0f}s] shape {shape or 'none'} "
                                    f"hosts {n} {kind} round {r + 1} {c}: {run.seconds:.2f} s "
                                    f"{'ok' if run.ok else 'FAILED ' + run.error}")  # fmt: skip
            lab.shape(None)
    finally:
        if lab is not None:
            lab.down()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    extra.append(f"whole run: {time.monotonic() - started:.0f} s")
    extra.append(f"command: {command}")
    report(results, args, extra)
    return 0 if all(r.ok for by in results.values() for runs in by.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
