#!/bin/sh
# Safe in every state the unpack (or the fetch) can stop in: a release is
# removed only if it carries this run's id.
release=$1 tmp=$2 run=$3 relay=$4
rm -rf -- "$tmp" "$relay"
if [ -f "$release/.deployer-release-id" ] && [ "$(cat -- "$release/.deployer-release-id")" = "$run" ]; then
    rm -rf -- "$release"
fi
# The first release of an instance leaves no empty directory behind.
rmdir -- "${release%/*}" 2> /dev/null || true
