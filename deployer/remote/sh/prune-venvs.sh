#!/bin/sh
# The virtualenvs in `venvs` that no release under `root` links to any
# more go (every instance under root shares them). With `drop`, that link
# goes first: the undo of a run whose release will be discarded. Under the
# flock venv.sh takes (see there). A name that is not a virtualenv's is
# left alone, and a link is compared as a whole line, never as a pattern.
set -eu
venvs=$1 root=$2 drop=${3:-}
if [ -n "$drop" ] && [ -L "$drop" ]; then
    rm -f -- "$drop"
fi
{ [ -d "$venvs" ] && [ ! -L "$venvs" ]; } || exit 0
command exec 9< "$venvs" || exit 0
flock -w 60 9 || { echo "another run has held $venvs for 60 s; its unused virtualenvs stay" >&2; exit 1; }
used=$(for link in "$root"/*.releases/*/.venv; do
    if [ -L "$link" ]; then readlink -- "$link" || :; fi
done)
gone=0
# shellcheck disable=SC2010 # ls -q: a name with a newline in it stays one line, which the pattern then refuses.
for name in $(ls -1q -- "$venvs" | grep -E '^[0-9]+\.[0-9]+\.[0-9]+-[0-9a-f]{16}$'); do
    if ! printf '%s\n' "$used" | grep -qxF -- "$venvs/$name"; then
        # Not whole any more before anything else goes: a removal cut short is never reused.
        rm -f -- "$venvs/$name/.deployer-whole"
        rm -rf -- "${venvs:?}/$name"
        gone=$((gone + 1))
    fi
done
[ "$gone" = 0 ] || echo "removed $gone virtualenv(s) that no release uses"
