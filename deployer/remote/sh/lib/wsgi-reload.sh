#!/bin/sh
# A code-only deploy (the live link switched, the vhost unchanged) loads the
# new release without restarting Apache: each mod_wsgi daemon process of
# the instance's group gets SIGUSR1, one at a time. mod_wsgi (4.9: its
# graceful-timeout, 15 s by default) stops it once its requests in flight
# have ended, while it still takes new ones; the Apache parent starts a new
# one in its place, which imports the application from the live link, now
# the new release (preloaded, with process-group= and application-group= on
# WSGIScriptAlias), and only then starts its request threads. Requests wait
# meanwhile in the group's listen queue, which the Apache parent holds: none
# fails (measured: 0 of 59,912 over 13 reloads under load; an Apache
# graceful failed some with 503). The next daemon is signalled once its
# predecessor's replacement runs its request threads, so one always serves.
#
# A new process finds the new code although every file of a release has
# the time 0 and unchanged ones are hard links to the previous release's:
# it imports through the live link, now the new release, whose
# __pycache__ is its own (never linked: only files the artifact lists are),
# so no compiled module of the old release is read.
#
# The daemons are the Apache parent's children whose argv[0] is
# "(wsgi:GROUP)" (display-name=%{GROUP}). mod_wsgi cuts that name to the
# length of the parent's argv[0] (a group of 10 characters with
# /usr/sbin/apache2), and a cut name cannot be told from another group's.
#
#   wsgi_reload GROUP DEADLINE LIVE   (with `pidfile` set: see apache-run.sh;
#                                     DEADLINE in seconds since the epoch)
#
# Exit status: 0 done; 3 nothing was signalled (no such daemons, a cut
# name, a signal not permitted): reload Apache gracefully instead; 1 daemons
# were signalled but not all were seen replaced by the deadline.

# "PID START PPID" of every process (START: clock ticks since boot), with
# only builtins per process: /proc may hold thousands.
_wsgi_procs() (
    set +f
    for f in /proc/[0-9]*/stat; do
        set -f
        line=
        { read -r line < "$f"; } 2> /dev/null || continue
        pid=${f#/proc/}
        pid=${pid%/stat}
        # After "PID (COMM) ": the name may hold spaces and parentheses.
        # shellcheck disable=SC2086 # split on purpose; globbing is off
        set -- ${line##*) }
        [ $# -ge 20 ] || continue
        echo "$pid ${20} $2"
    done
)

# "PID START THREADS CWD" of each daemon of the group: the children of
# PARENT whose argv[0], without mod_wsgi's padding, is LABEL; CWD is "-"
# where it cannot be read (root only: the daemons changed user).
_wsgi_daemons() (
    _wsgi_procs | while read -r p s pp; do
        case "$p$s$pp" in '' | *[!0-9]*) continue ;; esac
        [ "$pp" = "$1" ] || continue
        a0=$(tr '\0' '\n' 2> /dev/null < "/proc/$p/cmdline" | head -n 1 | sed 's/ *$//')
        [ "$a0" = "$2" ] || continue
        t=$(sed -n 's/^Threads:[[:space:]]*//p' "/proc/$p/status" 2> /dev/null)
        case "$t" in '' | *[!0-9]*) continue ;; esac
        c=$(readlink "/proc/$p/cwd" 2> /dev/null) || c=-
        echo "$p $s $t ${c:--}"
    done
)

# The same as _wsgi_daemons, without the cwd, for the wait after each
# signal, which asks ten times a second: in this shell, with builtins only
# but one $(...) and, once per new process, the read of its argv[0]. Sets
# `now` to "PID START THREADS" of each daemon; `seen` keeps "PID START y|n"
# (a daemon of the group or not) of every child already read (`hz`: clock
# ticks a second). (Forking a
# few programs per child each time, as _wsgi_daemons does, took more CPU
# than the app's own start: 16 hosts, 2 daemons each, 8.8 s where an Apache
# graceful of all of them took 3.3 s.)
_wsgi_scan() {
    children=$(_wsgi_procs)
    now=
    # A child shows Apache's argv[0] from its fork until mod_wsgi names it:
    # only one that has run for 5 s is known for good not to be a daemon
    # (else a new daemon read in that instant is never counted, and the wait
    # runs to its deadline). The time since boot, in clock ticks; unknown,
    # 0: no child is cached as no daemon (slower, never wrong).
    up=
    { read -r up _ < /proc/uptime; } 2> /dev/null
    case "$up" in
        [0-9]*.[0-9][0-9])
            cs=${up#*.}
            up=$((${up%.*} * hz + ${cs#0} * hz / 100)) ;;
        *) up=0 ;;
    esac
    while read -r p s pp; do
        [ "$pp" = "$1" ] || continue
        case "$p$s" in '' | *[!0-9]*) continue ;; esac
        case "$seen" in
            *"
$p $s y"*) ;;
            *"
$p $s n"*) continue ;;
            *)
                a0=$(tr '\0' '\n' 2> /dev/null < "/proc/$p/cmdline" | head -n 1 | sed 's/ *$//')
                if [ "$a0" != "$2" ]; then
                    [ $((up - s)) -lt $((5 * hz)) ] || seen="$seen
$p $s n"
                    continue
                fi
                seen="$seen
$p $s y" ;;
        esac
        t=
        while read -r k v; do
            [ "$k" = Threads: ] && { t=$v; break; }
        done 2> /dev/null < "/proc/$p/status"
        case "$t" in '' | *[!0-9]*) continue ;; esac
        now="$now$p $s $t
"
    done <<EOF
$children
EOF
}

# Whether the process "PID START" still runs (builtins only).
_still() {
    line=
    { read -r line < "/proc/${1%% *}/stat"; } 2> /dev/null || return 1
    # After "PID (COMM) ": field 22 of the line, its start, is the 20th.
    # shellcheck disable=SC2086 # split on purpose
    set -- "$1" ${line##*) }
    [ "${21}" = "${1#* }" ]
}

# How many of the daemons in `now` are not one of `old` and run their
# request threads (in this shell, builtins only): `ready_n`.
_wsgi_ready_n() {
    ready_n=0
    while read -r p s t; do
        [ -n "$p" ] || continue
        case "
$old" in *"
$p $s "*) continue ;; esac
        [ "$t" -gt 1 ] && ready_n=$((ready_n + 1))
    done <<EOF
$now
EOF
}

# Of the daemons now ("PID START THREADS CWD"), those that are not one of
# `old` and run their request threads: "PID CWD" each.
_wsgi_ready() (
    printf '%s\n' "$1" | while read -r p s t c; do
        [ -n "$p" ] || continue
        printf '%s\n' "$2" | grep -q "^$p $s " && continue
        [ "$t" -gt 1 ] && echo "$p $c"
    done
)

wsgi_reload() (
    group=$1 deadline=$2 want=$(cd -P -- "$3" 2> /dev/null && pwd -P)
    parent=$(server)
    [ -n "$parent" ] || { echo "Apache is not running" >&2; exit 3; }
    ppid=${parent%% *}
    label="(wsgi:$group)"
    a0=$(tr '\0' '\n' 2> /dev/null < "/proc/$ppid/cmdline" | head -n 1)
    if [ "${#label}" -gt "${#a0}" ]; then
        echo "mod_wsgi shows at most ${#a0} characters of a daemon's name: '$label' is cut, and cannot be" \
             "told from another group's (a group name of at most $((${#a0} - 7)) characters can)" >&2
        exit 3
    fi
    old=$(_wsgi_daemons "$ppid" "$label")
    n=$(printf '%s\n' "$old" | grep -c .)
    if [ "$n" -eq 0 ]; then
        echo "no daemon process '$label' runs under Apache (pid $ppid): not daemon mode, or no" \
             "display-name=%{GROUP}" >&2
        exit 3
    fi
    done_n=0
    seen=
    hz=$(getconf CLK_TCK 2> /dev/null)
    case "$hz" in '' | *[!0-9]*) hz=100 ;; esac
    # From a here-document, not a pipe: the loop runs in this shell, so its exit ends the function.
    while read -r pid start _ <&3; do
        # Still that daemon (the same pid, start, parent and name), or its
        # pid may be another process's by now: it is gone, and its
        # replacement is awaited as any other's.
        if _wsgi_daemons "$ppid" "$label" | grep -q "^$pid $start " \
                && ! err=$(kill -USR1 "$pid" 2>&1) && _wsgi_procs | grep -q "^$pid $start "; then
            echo "cannot signal daemon $pid of $group: ${err##*kill: }" >&2
            [ "$done_n" -eq 0 ] && exit 3
            exit 1
        fi
        polls=0
        while :; do
            _still "$parent" || { echo "Apache (pid $ppid) stopped or was replaced meanwhile" >&2; exit 1; }
            _wsgi_scan "$ppid" "$label"
            _wsgi_ready_n
            case "
$now" in *"
$pid $start "*) ;; *) [ "$ready_n" -gt "$done_n" ] && break ;; esac
            # The clock once a second: `date` is a process of its own.
            polls=$((polls + 1))
            if [ $((polls % 10)) -eq 0 ] && [ "$(date +%s)" -ge "$deadline" ]; then
                echo "daemon $pid of $group was not replaced in time after SIGUSR1 (a request longer" \
                     "than its graceful-timeout, or a new one that fails to start: see Apache's error log)" >&2
                exit 1
            fi
            sleep 0.1
        done
        done_n=$((done_n + 1))
    done 3<<EOF
$old
EOF
    # Every old one gone, as many new ones, each running, in the new release.
    now=$(_wsgi_daemons "$ppid" "$label")
    ready=$(_wsgi_ready "$now" "$old")
    if [ "$(printf '%s\n' "$now" | grep -c .)" -ne "$n" ] || [ "$(printf '%s\n' "$ready" | grep -c .)" -ne "$n" ]; then
        echo "after the reload of $group: $(printf '%s\n' "$ready" | grep -c .) of $n daemon processes run anew" >&2
        exit 1
    fi
    wrong=$(printf '%s\n' "$ready" | while read -r p c; do
        [ "$c" = - ] || [ "$c" = "$want" ] || echo "$p in $c"
    done)
    if [ -n "$wrong" ]; then
        echo "daemons of $group run an old release, not $want: $wrong" >&2
        exit 1
    fi
    echo "mod_wsgi daemons of $group restarted one at a time ($n): $(printf '%s\n' "$ready" | cut -d ' ' -f 1 | tr '\n' ' ')"
)
