#!/bin/sh
# Everything the install needs beside the file lives in one directory of its
# own, `work` (random per run, made with mkdir, which never follows a link
# and fails on any existing name): the new content before it is renamed into
# place, and the previous file as a hard link, the same inode, so a rollback
# restores its content, mode and owner exactly. Nothing of the previous file
# is read into memory: a link to /dev/zero or a FIFO is refused before
# anything reads it.
set -eu
path=$1 mark=$2 mode=$3 owner=$4 work=$5 size=$6 from=${7-}
dir=${path%/*}
if [ -n "$from" ] && { [ -L "$from" ] || [ ! -f "$from" ] || [ "$(head -n 1 -- "$from")" != "$mark" ]; }; then
    echo "$from is not a file deployer wrote for this instance; deployer will not install it" >&2
    exit 1
fi
mkdir -p -- "$dir"
umask 077
if [ -L "$path" ]; then
    echo "$path is a symbolic link; deployer will not write through it (remove it)" >&2
    exit 1
elif [ -e "$path" ]; then
    if [ ! -f "$path" ]; then
        echo "$path exists and is not a regular file; deployer will not replace it" >&2
        exit 1
    fi
    if [ "$(wc -c < "$path")" -gt 1048576 ]; then
        echo "$path is larger than 1 MiB; deployer will not replace it (move it aside)" >&2
        exit 1
    fi
    if [ "$(head -n 1 -- "$path")" != "$mark" ]; then
        echo "$path was not written by deployer (its first line is not '$mark');" \
             "deployer will not replace it: move it aside, or deploy under another config name" >&2
        exit 1
    fi
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
