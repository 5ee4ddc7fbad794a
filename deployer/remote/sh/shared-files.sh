#!/bin/sh
# Before anything changes: every shared file a release needs is there
# (deployer never writes one: it holds what only the hosts may know).
shared=$1
shift
missing=
for f in "$@"; do
    [ -f "$shared/$f" ] || missing="$missing $shared/$f"
done
if [ -n "$missing" ]; then
    echo "missing shared file(s):$missing; put them there (deployer never writes them), or remove them from" \
         "shared/files in targets.yaml" >&2
    exit 1
fi
