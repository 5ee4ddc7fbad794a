#!/bin/sh
# Destroy, before Apache reloads: the instance's site disabled, then its
# vhost removed, each kept in `work` for the undo in the layout relink and
# install keep (restore_link and restore put them back). Only a link, and
# only a vhost whose first line is deployer's mark, are removed.
set -eu
path=$1 work=$2
if [ -L "$path" ]; then
    mkdir -m 700 -- "$work"
    readlink -- "$path" > "$work/previous"
    rm -f -- "$path"
elif [ -e "$path" ]; then
    echo "$path is not a symbolic link; deployer will not remove it" >&2
    exit 1
fi
