#!/bin/sh
set -eu
path=$1 mark=$2 work=$3
if [ -L "$path" ] || { [ -e "$path" ] && { [ ! -f "$path" ] || [ "$(head -n 1 -- "$path")" != "$mark" ]; }; }; then
    echo "$path was not written by deployer; deployer will not remove it" >&2
    exit 1
fi
if [ -e "$path" ]; then
    mkdir -m 700 -- "$work"
    ln -T -- "$path" "$work/previous"
    rm -f -- "$path"
fi
