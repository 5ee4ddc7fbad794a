#!/bin/sh
# Safe in every state an install can stop in, including never started.
path=$1 work=$2
[ -d "$work" ] && [ ! -L "$work" ] || exit 0
if [ -f "$work/previous" ]; then
    # shellcheck disable=SC3013 # dash's, bash's and busybox's test all have -ef
    if [ ! "$work/previous" -ef "$path" ]; then mv -fT -- "$work/previous" "$path"; fi
elif [ -e "$work/none" ]; then
    rm -f -- "$path"
fi
rm -rf -- "$work"
