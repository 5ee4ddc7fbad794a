#!/bin/sh
# What the runner needs to send only what changed: the sha256 of the file
# list of the release the new one starts from, the files in it that may not
# be linked (changed in place since they were unpacked, or not this user's),
# and, from one host, the list itself (gzip, then base64: the output is
# text). That release is the live one; with none (a new instance), and
# `others` 1, the newest live release of another instance under the same
# deploy root (lib/seeds.sh), named on a line `seed <instance>`.
. ./lib/seeds.sh
live=$1 full=$2 others=$3
if from=$(readlink -- "$live"); then
    echo "live ${from##*/}"
fi
if [ -z "$from" ] || [ ! -f "$from/.deployer-sums" ]; then
    [ "$others" = 1 ] || exit 0
    from=$(seeds "$live" | head -n 1)
    [ -n "$from" ] || exit 0
    seed=${from%.releases/*}
    echo "seed ${seed##*/}"
fi
have=$(sha256sum < "$from/.deployer-sums") || exit 0
echo "base ${have%% *}"
uid=$(id -u)
(cd "$from" && cut -d ' ' -f 3- .deployer-sums | xargs -r -d '\n' stat -c '%Y %u %n' --) |
    awk -v uid="$uid" '$1 != 0 || $2 != uid { sub(/^[^ ]* [^ ]* /, ""); print "drift " $0 }'
if [ "$full" = 1 ]; then
    printf 'sums '
    gzip -c < "$from/.deployer-sums" | base64 -w 0
    echo
fi
