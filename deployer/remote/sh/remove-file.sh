#!/bin/sh
# Destroy, before Apache reloads: the instance's vhost removed, only if
# deployer wrote it (its first line is the mark), kept in `work` as a hard
# link (the same inode) for restore.sh to put back.
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
