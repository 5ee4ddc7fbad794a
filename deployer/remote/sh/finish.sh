#!/bin/sh
# Whatever the run's outcome: a line in the instance's history, then the
# lock released, if this run holds it (never another's). A history line is
# one write of less than PIPE_BUF bytes in append mode: whole, never mixed
# with another's.
state=$1 run=$2 line=$3
shift 3
[ -d "$state" ] && [ ! -L "$state" ] || exit 0
if [ "$(head -n 1 -- "$state/lock/owner" 2> /dev/null)" != "$run" ]; then exit 0; fi
# Destroyed: the state goes too, but only once every path named after the
# line is gone (the purge before it may have failed, on a file it could not
# remove): else `list` and `destroy` could no longer find what is left, and
# a new instance of that name would take over the old one's shared files.
if [ "$#" -gt 0 ]; then
    left=
    for p in "$@"; do if [ -e "$p" ] || [ -L "$p" ]; then left=1; fi; done
    if [ -z "$left" ]; then rm -rf -- "$state"; exit; fi
fi
[ -z "$line" ] || printf '%s\n' "$line" >> "$state/history"
rm -rf -- "$state/lock"
