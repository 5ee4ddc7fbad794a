#!/bin/sh
# Each shared path of the new release made a link to the instance's shared
# directory: what the release holds there (from the package) goes, what is
# in the shared directory is never touched; a directory missing there is
# made (group-writable and setgid when `group` is set: the app writes
# there). The release is this run's own, but its directories came from the
# package: one that is a link could lead the removal out of the release,
# so none on the way may be one.
set -eu
release=$1 shared=$2 group=$3
shift 3
for entry in "$@"; do
    kind=${entry%%:*} rel=${entry#*:}
    at=$release
    rest=$rel
    while [ "${rest#*/}" != "$rest" ]; do
        at=$at/${rest%%/*} rest=${rest#*/}
        if [ -L "$at" ] || { [ -e "$at" ] && [ ! -d "$at" ]; }; then
            echo "${at#"$release"/} in the release is not a directory; cannot link $rel there" >&2
            exit 1
        fi
    done
    if [ "$kind" = d ] && [ ! -d "$shared/$rel" ]; then
        mkdir -p -- "$shared/$rel"
        if [ -n "$group" ]; then
            chgrp -- "$group" "$shared/$rel"
            chmod 2775 "$shared/$rel"
        fi
    fi
    mkdir -p -- "${release}/$(dirname -- "$rel")"
    rm -rf -- "${release:?}/$rel"
    ln -s -- "$shared/$rel" "$release/$rel"
done
echo "linked $# shared path(s) from $shared"
