#!/bin/sh
# Everything the install needs beside the file lives in one directory of its
# own, `work` (random per run, made with mkdir, which never follows a link
# and fails on any existing name): the new content before it is renamed into
# place, and the previous file as a hard link, the same inode, so a rollback
# restores its content, mode and owner exactly. Nothing of the previous file
# is read into memory: a link to /dev/zero or a FIFO is refused before
# anything reads it.
set -eu
. ./lib/ours.sh
path=$1 mark=$2 mode=$3 owner=$4 work=$5 size=$6 from=${7-}
dir=${path%/*}
if [ -n "$from" ] && { [ -L "$from" ] || [ ! -f "$from" ] || [ "$(head -n 1 -- "$from")" != "$mark" ]; }; then
    echo "$from is not a file deployer wrote for this instance; deployer will not install it" >&2
    exit 1
fi
mkdir -p -- "$dir"
umask 077
ours "$path" "$mark" || exit 1
if [ -e "$path" ]; then
    mkdir -- "$work"
    ln -T -- "$path" "$work/previous"
else
    mkdir -- "$work"
    : > "$work/none"
fi
if [ -n "$from" ]; then
    cat -- "$from" > "$work/new"
else
    cat > "$work/new"
fi
# Cut short (the runner died mid-send), it is not installed.
if [ -z "$from" ] && [ "$(wc -c < "$work/new")" -ne "$size" ]; then
    echo "the new content of $path arrived incomplete" >&2
    exit 1
fi
chmod "$mode" "$work/new"
if [ -n "$owner" ]; then chown -- "$owner" "$work/new"; fi
mv -fT -- "$work/new" "$path"
