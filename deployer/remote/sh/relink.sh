#!/bin/sh
# rename(2) over the old link is atomic: a reader sees the old target or the
# new one, never a missing path. The new link is made inside `work`, a
# directory of the run's own beside it (mkdir: never through a planted
# name), which also keeps the previous target for the undo: no second round
# trip to read it first. `mv -T` will not put the link into a directory
# planted at `path`, and a real file or directory there is refused.
set -eu
path=$1 target=$2 work=$3
mkdir -p -- "${path%/*}"
if [ -e "$path" ] && [ ! -L "$path" ]; then
    echo "$path exists and is not a symlink; deployer will not replace it (move it aside)" >&2
    exit 1
fi
mkdir -m 700 -- "$work"
if [ -L "$path" ]; then readlink -- "$path" > "$work/previous"; else : > "$work/none"; fi
ln -sT -- "$target" "$work/new"
mv -fT -- "$work/new" "$path"
