#!/bin/sh
# What the runner needs to send only what changed: the sha256 of the file
# list of the release the new one starts from, the files in it that may not
# be linked (lib/linkable.sh), and, from one host, the list itself (gzip,
# then base64: the output is text). That release is the live one; with no
# live link at all (a new instance) and `others` 1, the newest live release
# of another instance under the same deploy root (lib/seeds.sh), named on a
# line `seed <instance>`.
. ./lib/linkable.sh
. ./lib/seeds.sh
live=$1 full=$2 others=$3
if from=$(readlink -- "$live"); then
    echo "live ${from##*/}"
    [ -f "$from/.deployer-sums" ] || exit 0
elif [ "$others" = 1 ]; then
    from=$(seeds "$live" | head -n 1)
    [ -n "$from" ] || exit 0
    seed=${from%.releases/*}
    echo "seed ${seed##*/}"
else
    exit 0
fi
have=$(sha256sum < "$from/.deployer-sums") || exit 0
echo "base ${have%% *}"
# Listed, but not as the list has it among the files that may be linked.
unlinkable "$from" "$from/.deployer-sums" | sed 's/^/drift /'
if [ "$full" = 1 ]; then
    printf 'sums '
    gzip -c < "$from/.deployer-sums" | base64 -w 0
    echo
fi
