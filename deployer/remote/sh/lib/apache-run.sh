#!/bin/sh
# Whether Apache runs, as its own config and /proc say; for apache.sh and
# check.sh.

# Where Apache writes its pid file and its error log, as its config says now
# (`runtime CTL...` sets pidfile and errorlog), or why that cannot be told.
runtime() {
    cfg=$("$@" -t -D DUMP_RUN_CFG 2> /dev/null 9<&- | head -c 65536)
    pidfile=$(printf '%s\n' "$cfg" | sed -n 's/^PidFile: "\(\/[^"]*\)"$/\1/p' | head -n 1)
    # shellcheck disable=SC2034 # for apache.sh's messages
    errorlog=$(printf '%s\n' "$cfg" | sed -n 's/^Main ErrorLog: "\(\/[^"]*\)"$/\1/p' | head -n 1)
    if [ -z "$pidfile" ]; then
        echo "cannot tell where Apache writes its pid file: '$* -t -D DUMP_RUN_CFG' names no PidFile" >&2
        return 1
    fi
}

# Whether a site is enabled in the sites-enabled folder $1 (with none, the
# builtin local Apache is stopped, and not running is its rest).
any_site() (
    set +f
    ls "$1"/*.conf > /dev/null 2>&1
)

# "PID START" of a running process (START: when it started, in clock ticks
# since boot: a pid can be used again), or nothing.
started() {
    case "$1" in ''|*[!0-9]*) return ;; esac
    s=$(sed 's/.*) //' "/proc/$1/stat" 2> /dev/null | cut -d ' ' -f 20)
    case "$s" in ''|*[!0-9]*) ;; *) echo "$1 $s" ;; esac
}

# The Apache parent the pid file names, if it runs: "PID START", or nothing.
server() {
    p=$(head -c 32 -- "$pidfile" 2> /dev/null | tr -d '\n')
    case "$p" in ''|*[!0-9]*) return ;; esac
    case "$(head -c 16 "/proc/$p/comm" 2> /dev/null)" in apache2*|httpd*) started "$p" ;; esac
}

