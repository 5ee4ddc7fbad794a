#!/bin/sh
# TERM the group, KILL it if it outlives the grace, then wait until no
# process of it is left: a migrate that ignores TERM must not go on working
# after the deploy said it was stopped.
# (dash's kill takes no `--`; a negative pid after the signal is a group.)
stop_group() {
    pid=$1 grace=$2
    kill -TERM "-$pid" 2>/dev/null || return 0
    for signal in KILL ''; do
        i=0
        while kill -0 "-$pid" 2>/dev/null; do
            i=$((i + 1))
            if [ "$i" -gt "$((grace * 10))" ]; then
                [ -n "$signal" ] && kill -"$signal" "-$pid" 2>/dev/null
                break
            fi
            sleep 0.1
        done
    done
}
