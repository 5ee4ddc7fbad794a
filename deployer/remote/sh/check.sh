#!/bin/sh
# One line per check: "check KEY ok|failed DETAIL", with further lines of
# detail as "check KEY + TEXT" (only configtest's output has them), and a
# held lock as state.sh prints it ("lock AGE RUN WHO"). Exits 0
# whatever it finds. `-w` is access(2): false for root too on a read-only
# mount. Apache's run and lock dirs are the only thing configtest itself
# may make (Debian's apache2ctl makes them when missing), as in a deploy.
# The tools: what a deploy runs (sh/*.sh) that a minimal image may
# lack, coreutils' own taken as given; ssh serves only the relay, which
# falls back to the runner sending the artifact: a note, not a failure.
# Apache: that it runs (a deploy reloads it, or starts it if it is gone;
# none running with no site enabled is the builtin local Apache's rest).
root=$1 available=$2 enabled=$3 state=$4 relay=$5
shift 5
. ./lib/apache-run.sh
writable() {
    key=$1 path=$2 at=$2
    while [ ! -e "$at" ] && [ ! -L "$at" ]; do at=$(dirname -- "$at"); done
    if [ "$at" = "$path" ] && [ ! -d "$at" ]; then
        echo "check $key failed $path exists and is not a directory"
    elif [ ! -d "$at" ]; then
        echo "check $key failed $path cannot be made: $at is not a directory"
    elif [ ! -w "$at" ] || [ ! -x "$at" ]; then
        echo "check $key failed $at is not writable by $(id -un 2> /dev/null || id -u)"
    elif [ "$at" = "$path" ]; then
        echo "check $key ok $path is a writable directory"
    else
        echo "check $key ok $path can be made in $at"
    fi
}
absent() {
    gone=
    for tool in "$@"; do command -v "$tool" > /dev/null 2>&1 || gone="$gone $tool"; done
    printf '%s' "$gone"
}
writable deploy_root "$root"
writable sites-available "$available"
writable sites-enabled "$enabled"
missing=$(absent tar gzip awk sed grep xargs sha256sum base64 mkfifo flock)
spare=
[ "$relay" = 0 ] || spare=$(absent ssh)
if [ -n "$missing" ]; then
    echo "check tools failed not found:$missing"
elif [ -n "$spare" ]; then
    echo "check tools ok not found:$spare (only the relay needs them: the runner sends the artifact to each host)"
else
    echo "check tools ok all found"
fi
lock=$state/lock
if [ -L "$state" ] || { [ -e "$state" ] && [ ! -d "$state" ]; }; then
    echo "check lock failed $state is not a directory: a deploy cannot take the lock"
elif [ -L "$lock" ] || { [ -e "$lock" ] && [ ! -d "$lock" ]; }; then
    echo "check lock failed $lock is not a lock deployer made: a deploy cannot take the lock"
elif [ -d "$lock" ]; then
    since=$(stat -c %Y -- "$lock" 2> /dev/null) || since=$(date +%s)
    echo "lock $(($(date +%s) - since)) $(head -n 1 -- "$lock/owner" 2> /dev/null | tr -d ' ')" \
        "$(sed -n 2p -- "$lock/owner" 2> /dev/null)"
    echo "check lock held"
else
    echo "check lock ok nobody holds it"
fi
if ! runtime "$@" 2> /dev/null; then
    echo "check apache failed cannot tell where Apache writes its pid file: '$* -t -D DUMP_RUN_CFG' names none"
elif running=$(server) && [ -n "$running" ]; then
    echo "check apache ok Apache runs (pid ${running%% *})"
elif ! any_site "$enabled"; then
    echo "check apache ok Apache is not running, and no site is enabled: a deploy starts it"
else
    echo "check apache failed Apache is not running (its pid file: $pidfile): every site here is down"
fi
if out=$("$@" configtest 2>&1); then
    echo "check configtest ok $(printf '%s\n' "$out" | tail -n 1)"
else
    echo "check configtest failed exit code $?:"
    printf '%s\n' "$out" | tail -n 15 | sed 's/^/check configtest + /'
fi
exit 0
