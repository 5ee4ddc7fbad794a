#!/bin/sh
# How a fetch of the artifact begins, for fetch.sh and fetch-url.sh.

# fetch_start RELAY PROGRAM WHAT: PROGRAM (WHAT in the message) is here, and
# the relay directory is made afresh (mode 0700: one already there, or a
# link, is not ours, and fails) and entered; or why not is said, and the
# fetch ends there (which never fails the deploy: the runner sends the
# artifact itself).
fetch_start() {
    if ! command -v "$2" > /dev/null; then
        echo "not fetched: no $3 on this host"
        exit 0
    fi
    if ! mkdir -p -- "${1%/*}" || ! mkdir -m 700 -- "$1" || ! cd -- "$1"; then
        echo "not fetched: cannot make $1"
        exit 0
    fi
    umask 077
}
