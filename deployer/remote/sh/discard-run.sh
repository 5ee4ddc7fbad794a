#!/bin/sh
# What a run that is gone (killed) left beside the releases: its release,
# if not live (and not `keep`), its part-made tree and the artifact's copy
# it offered.
releases=$1 live=$2 run=$3 keep=$4
cd -- "$releases" 2> /dev/null || exit 0
current=$(readlink -- "$live" 2> /dev/null) || current=
for r in *; do
    [ "$keep" = 0 ] || break
    # shellcheck disable=SC2015 # each test may fail; any failure skips the name
    [ -d "$r" ] && [ ! -L "$r" ] && [ -f "$r/.deployer-release-id" ] || continue
    [ "$(cat -- "$r/.deployer-release-id")" = "$run" ] || continue
    if [ "${current##*/}" = "$r" ]; then echo "release $r of that run is live: kept"; continue; fi
    rm -rf -- "$r" && echo "removed its release $r"
done
for d in .*.deployer-"$run" .deployer-relay-"$run"; do
    [ -e "$d" ] || continue
    rm -rf -- "$d" && echo "removed $d"
done
