#!/bin/sh
# Safe in every state a relink can stop in, including never started.
path=$1 work=$2
[ -d "$work" ] && [ ! -L "$work" ] || exit 0
if [ -f "$work/previous" ]; then
    ln -sfT -- "$(cat -- "$work/previous")" "$work/back" && mv -fT -- "$work/back" "$path"
elif [ -e "$work/none" ]; then
    rm -f -- "$path"
fi
rm -rf -- "$work"
