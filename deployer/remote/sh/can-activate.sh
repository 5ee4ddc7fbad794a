#!/bin/sh
# Before a rollback changes anything: the release is whole and keeps its
# vhost, and the live release is one the runner saw when it chose.
live=$1 release=$2 record=$3
shift 3
now=$(readlink -- "$live" 2> /dev/null) || now=
seen=0
for was in "$@"; do [ "${now##*/}" = "$was" ] && seen=1; done
if [ "$seen" = 0 ]; then
    echo "the live release changed (now ${now:-none}) since it was read; run the rollback again" >&2
    exit 1
fi
if [ -L "$release" ] || [ ! -f "$release/.deployer-sums" ] || [ ! -f "$release/$record" ]; then
    echo "$release is not a whole release with the vhost it was deployed with" >&2
    exit 1
fi
