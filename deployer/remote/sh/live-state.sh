#!/bin/sh
# What the runner needs to send only what changed: the sha256 of the live
# release's file list, the files in it changed in place (never linked), and,
# from one host, the list itself (gzip, then base64: the output is text).
live=$1 full=$2
from=$(readlink -- "$live") || exit 0
echo "live ${from##*/}"
[ -f "$from/.deployer-sums" ] || exit 0
have=$(sha256sum < "$from/.deployer-sums") || exit 0
echo "base ${have%% *}"
(cd "$from" && cut -d ' ' -f 3- .deployer-sums | xargs -r -d '\n' stat -c '%Y %n' --) \
    | awk '$1 != 0 { sub(/^[^ ]* /, ""); print "drift " $0 }'
if [ "$full" = 1 ]; then
    printf 'sums '
    gzip -c < "$from/.deployer-sums" | base64 -w 0
    echo
fi
