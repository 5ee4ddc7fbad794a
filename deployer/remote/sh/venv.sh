#!/bin/sh
# The release's virtualenv, `venvs`/`name`, linked from the release as
# .venv. The name is a hash of the interpreter, its version and the pinned
# requirements with their hashes: a whole virtualenv of that name holds the
# same packages, and is used as it is. Else it is built from the wheels
# the release brought (.deployer-python/), with no index: made where it
# stays (a virtualenv cannot be moved), marked whole last, and one that a
# killed run left half-made is removed first. All under an flock on
# `venvs` that prune-venvs takes too, so a virtualenv is never removed
# between its check here and the release's link to it.
set -eu
release=$1 venvs=$2 name=$3 interpreter=$4 wait=$5
set=$release/.deployer-python
venv=$venvs/$name
fail() { echo "$*" >&2; exit 1; }
mkdir -p -- "$venvs"
{ [ -d "$venvs" ] && [ ! -L "$venvs" ]; } || fail "$venvs is not a folder (a link?); deployer will not use it"
command exec 9< "$venvs" || fail "cannot open $venvs"
flock -w "$wait" 9 || fail "another run has held $venvs for $wait s"
if [ -f "$venv/.deployer-whole" ] && [ ! -L "$venv" ]; then
    echo "reused the virtualenv $venv"
else
    rm -rf -- "$venv"
    log=$("$interpreter" -m venv -- "$venv" 2>&1) ||
        fail "$interpreter -m venv failed (on Debian, install python3-venv): $(printf '%s' "$log" | tail -n 5)"
    log=$("$venv/bin/python" -m pip install --no-index --no-deps --require-hashes --only-binary=:all: \
        --no-cache-dir --disable-pip-version-check --no-input --quiet \
        --find-links "$set/wheels" --requirement "$set/requirements.txt" 2>&1) ||
        fail "pip could not install the release's wheels into $venv: $(printf '%s' "$log" | tail -n 20)"
    : > "$venv/.deployer-whole"
    echo "built the virtualenv $venv: $(grep -c '^[A-Za-z0-9]' "$set/requirements.txt") packages"
fi
rm -f -- "$release/.venv"
ln -s -- "$venv" "$release/.venv"
