#!/bin/sh
# What an instance's host holds, for `deployer releases`, `history` and
# `rollback` (see remote/instance.py): its live release, every release (whether
# whole, whether it keeps its vhost), who holds its lock and since when,
# and the end of its history. Reads only.
live=$1 releases=$2 state=$3 lines=$4 record=$5 shared=${6-}
now=$(readlink -- "$live" 2> /dev/null) && echo "live ${now##*/}"
if [ -n "$shared" ] && { [ -e "$shared" ] || [ -L "$shared" ]; }; then echo shared; fi
if [ -d "$releases" ]; then
    # shellcheck disable=SC2010 # ls -q: a name with a newline in it stays one line, which the release pattern then refuses.
    ls -1q -- "$releases" | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$' | sort | while IFS= read -r r; do
        whole=0 vhost=0
        [ -f "$releases/$r/.deployer-sums" ] && [ ! -L "$releases/$r" ] && whole=1
        [ -f "$releases/$r/$record" ] && vhost=1
        echo "release $r $whole $vhost"
    done
fi
if [ -d "$state/lock" ]; then
    since=$(stat -c %Y -- "$state/lock")
    run=$(head -n 1 -- "$state/lock/owner" 2> /dev/null | tr -d ' ' | head -c 64)
    echo "lock $(($(date +%s) - since)) $run $(sed -n 2p -- "$state/lock/owner" 2> /dev/null | head -c 512)"
fi
# A line deployer writes is under 2 KiB (context.history_line); a longer
# one is cut, so that the answer stays within the runner's limit.
if [ -f "$state/history" ]; then tail -n "$lines" -- "$state/history" | cut -c 1-4096 | sed 's/^/history /'; fi
exit 0
