#!/bin/sh
# Apache's side of a run. Apache reads only vhosts that passed configtest:
# an instance's entry in sites-enabled is a stub (NAME.stub, see
# plan/stages.py) that includes its live vhost, NAME.conf, or, only when
# Apache runs with -D `define` (a test), the next one, NAME.next instead.
# A run tests NAME.next so, and makes it NAME.conf only once that test has
# passed, holding the host's Apache lock (an flock on a file in
# sites-available, shared by every instance and every runner) from that
# test to the end of the reload it starts: no two runs test, promote or
# reload at once, so the configuration one tested is what Apache loads.
#
#   ours     NAME.conf is deployer's to replace (its first line is `mark`)
#   test     the config with NAME.next in place of NAME.conf
#   promote  locked: test (unless NAME.next is NAME.conf as it is); NAME.next
#            becomes NAME.conf, the previous one
#            kept in `work` (as install.sh keeps it, for restore.sh); reload,
#            or, if the vhost is the same, restart its mod_wsgi daemons one
#            at a time (lib/wsgi-reload.sh): a code-only deploy drops no
#            request, and the release `code` (the live link) is loaded
#   restore  locked: NAME.conf put back as it was before promote
#   reload   locked: configtest, then graceful (or start, if Apache is not
#            running), and wait until Apache has loaded the configuration
#
# A reload is done when Apache says so: `apache2ctl graceful` only sends a
# signal, and Apache reads its configuration once its old mod_wsgi daemons
# have stopped (seconds, with requests in flight). Each time it has read it,
# Apache writes its pid file anew (a new file renamed into place) naming its
# parent process, which a graceful restart keeps: the reload has finished
# when the pid file is a new one and names the same parent, running since
# the same moment. A parent that is gone has died (a config that passed the
# test but failed to load: a port taken, a log it cannot open).
#
# The arguments after the first nine are the ctl command (apache2ctl, sudo
# apache2ctl, ...): it is given apache2ctl's own arguments. The lock's
# descriptor (9) is closed for it, or an Apache it starts would hold the lock
# for as long as it runs. Every wait ends by `wait` seconds from the start
# (within the step's own time limit), the lock's within 120 s.
set -uf
. ./lib/restore.sh
. ./lib/apache-run.sh
. ./lib/ours.sh
. ./lib/wsgi-reload.sh
mode=$1 dir=$2 wait=$3 define=$4 next=$5 live=$6 work=$7 mark=$8 code=$9
shift 9
deadline=$(($(date +%s) + wait))

fail() {
    printf '%s\n' "$*" >&2
    exit 1
}

take_lock() {
    lockfile=$dir/sites-available/.deployer-apache.lock
    # Made under a name of its own and linked into place (link(2) never
    # follows a name), for every user who deploys here (group-writable, as
    # sites-available is); a FIFO or a link at the name is refused before it
    # is opened, and opened read-write, which a FIFO planted meanwhile cannot
    # hold up.
    if [ ! -e "$lockfile" ] && [ ! -L "$lockfile" ]; then
        made=$(umask 002 && mktemp "$lockfile.XXXXXX") && chmod 664 "$made" && ln "$made" "$lockfile" 2> /dev/null
        rm -f -- "${made:-}"
    fi
    if [ -L "$lockfile" ] || [ ! -f "$lockfile" ]; then
        fail "$lockfile is not a regular file; deployer will not use it as Apache's lock (remove it)"
    fi
    command exec 9<> "$lockfile" || fail "cannot open $lockfile, this host's Apache lock, to write"
    [ -f /dev/fd/9 ] || fail "$lockfile is not a regular file; deployer will not use it as Apache's lock"
    left=$((deadline - $(date +%s)))
    [ "$left" -le 120 ] || left=120
    if ! flock -w "$left" 9; then
        fail "another run has held this host's Apache lock ($lockfile) for $left s"
    fi
}

# The pid file's identity: a new file each time Apache has read its config.
generation() {
    stat -c '%i %y' -- "$pidfile" 2> /dev/null || echo none
}

error_log_tail() {
    if [ -n "$errorlog" ] && [ -r "$errorlog" ]; then
        echo "the end of Apache's error log ($errorlog):"
        tail -n 5 -- "$errorlog" | cut -c 1-400
    else
        echo "see Apache's error log${errorlog:+ ($errorlog)}"
    fi
}

# Wait until Apache has loaded its config anew after a graceful (the parent
# `before` ran) or a start (none did).
await() {
    before=$1 gen=$2
    while [ "$(date +%s)" -lt "$deadline" ]; do
        now=$(server)
        if [ -n "$now" ] && [ "$(generation)" != "$gen" ]; then
            if [ -z "$before" ]; then
                echo "Apache started (pid ${now%% *})"
            elif [ "$now" = "$before" ]; then
                echo "Apache reloaded its configuration (pid ${now%% *})"
            else
                echo "Apache was restarted meanwhile (pid ${before%% *}, now ${now%% *}); it runs the new configuration"
            fi
            return 0
        fi
        # What the builtin ctl does once the last site is gone.
        if [ -z "$now" ] && [ ! -e "$pidfile" ] && ! any_site "$dir/sites-enabled"; then
            echo "Apache is not running: no site is enabled"
            return 0
        fi
        if [ -n "$before" ] && [ "$(started "${before%% *}")" != "$before" ]; then
            fail "Apache (pid ${before%% *}) stopped while it reloaded: it is not running;" \
                 "$(error_log_tail)"
        fi
        sleep 0.1
    done
    fail "Apache did not finish reloading in time (its pid file $pidfile was not written anew);" \
         "$(error_log_tail)"
}

reload() {
    runtime "$@" || exit 1
    before=$(server)
    gen=$(generation)
    if [ -n "$before" ]; then
        out=$("$@" graceful 2>&1 9<&-) || fail "$* graceful failed: $out"
    else
        out=$("$@" start 2>&1 9<&-) || fail "Apache was not running, and '$* start' failed: $out"
    fi
    [ -z "$out" ] || printf '%s\n' "$out"
    await "$before" "$gen"
}

# The vhost did not change: each mod_wsgi daemon group it names restarts
# its daemons; Apache reloads only if one cannot (a group not in daemon
# mode, a name mod_wsgi cuts, daemons the deploy user may not signal).
code_reload() {
    runtime "$@" || exit 1
    # Names of letters, digits, . _ - only (set -f: no word is a pattern),
    # and 20 at most: else Apache reloads.
    groups=$(awk 'tolower($1) == "wsgidaemonprocess" { print $2 }' "$live" | head -n 21)
    for group in $groups; do
        case "$group" in *[!A-Za-z0-9_.-]*) groups= ;; esac
    done
    [ "$(printf '%s\n' "$groups" | grep -c .)" -le 20 ] || groups=
    [ -n "$groups" ] || echo "no mod_wsgi daemon group in $live that deployer can restart by itself"
    for group in $groups; do
        wsgi_reload "$group" "$deadline" "$code"
        case $? in
        0) ;;
        3)
            # Its config was not tested under the lock (the vhost was the same).
            out=$("$@" configtest 2>&1 9<&-) || fail "Apache's config fails its test; not reloading: $out"
            echo "so Apache reloads gracefully instead"; reload "$@"; return ;;
        *) exit 1 ;;
        esac
    done
    [ -n "$groups" ] || reload "$@"
}

test_next() {
    out=$("$@" -t -D "$define" 2>&1 9<&-) || fail "Apache's config with the new vhost fails its test: $out"
    printf '%s\n' "$out"
}

case "$mode" in
ours)
    ours "$live" "$mark" || exit 1
    ;;
test)
    test_next "$@"
    ;;
promote)
    take_lock
    if [ -L "$next" ] || [ ! -f "$next" ] || [ "$(head -n 1 -- "$next")" != "$mark" ]; then
        fail "$next is not the vhost this run wrote; deployer will not make it live"
    fi
    ours "$live" "$mark" || exit 1
    same=false
    if [ -f "$live" ] && cmp -s -- "$next" "$live"; then same=true; fi
    # The same vhost: Apache already runs it, and only its daemons restart
    # (render tested the config with it before migrate); should they not
    # restart, code_reload tests the config before the graceful instead.
    $same || test_next "$@"
    mkdir -- "$work" || exit 1
    if [ -e "$live" ]; then ln -T -- "$live" "$work/previous"; else : > "$work/none"; fi
    mv -fT -- "$next" "$live"
    if $same; then code_reload "$@"; else reload "$@"; fi
    ;;
restore)
    # Never promoted (the run stopped before): nothing to put back, and no
    # lock to take (sites-available may not even exist yet).
    { [ -d "$work" ] && [ ! -L "$work" ]; } || exit 0
    take_lock
    restore_file "$live" "$work" || fail "cannot put $live back as it was"
    ;;
reload)
    # No sites-available: no site of deployer's was ever written here (an
    # undo of a run that stopped before), so there is nothing to reload.
    [ -d "$dir/sites-available" ] || exit 0
    take_lock
    out=$("$@" configtest 2>&1 9<&-) || fail "Apache's config fails its test; not reloading (Apache keeps what it runs): $out"
    reload "$@"
    ;;
*)
    fail "unknown mode: $mode"
    ;;
esac
