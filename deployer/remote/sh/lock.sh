#!/bin/sh
# One deploy (or rollback) of an instance at a time: the lock is a
# directory, made with mkdir, which exactly one caller can make; it holds
# who took it (`owner`: the run's id on the first line, then a line for
# people). On the first host it waits up to `wait` seconds for a holder to
# finish; the other hosts are locked only once the first one is ("go" on
# stdin), so two runs can never each hold a part and wait for the other.
# A holder releases the other hosts before the first, so there they wait
# a little longer than on the first, whatever `wait` is.
state=$1 run=$2 owner=$3 wait=$4 gated=$5 hint=$6 from=${7-}
if [ "$gated" = 1 ]; then
    IFS= read -r go || go=
    if [ "$go" != go ]; then
        echo "not locked here: the lock on the first host was not taken" >&2
        exit 1
    fi
fi
mkdir -p -- "${state%/*}"
mkdir -m 755 -- "$state" 2> /dev/null || true
if [ -L "$state" ] || [ ! -d "$state" ]; then
    echo "$state exists and is not a directory; deployer will not use it (move it aside)" >&2
    exit 1
fi
lock=$state/lock
start=$(date +%s)
# Taken over from run `from` (gone; see `deployer unlock`) if it still
# holds it (`-`: a lock with no owner, left by a run that died taking it):
# of two runs taking it over at once, only one makes `taken`. As below, a
# stop signal is ignored until the owner is written.
trap '' TERM INT HUP
if [ -n "$from" ] && [ -d "$lock" ] && [ ! -L "$lock" ]; then
    held=$(head -n 1 -- "$lock/owner" 2> /dev/null) || held=-
    if [ "$held" = "$from" ] && mkdir -- "$lock/taken-$from" 2> /dev/null; then
        if printf '%s\n%s\n' "$run" "$owner" > "$lock/taken-$from/owner" \
                && mv -f -- "$lock/taken-$from/owner" "$lock/owner"
        then exit 0; fi
        echo "cannot write $lock/owner" >&2
        exit 1
    fi
fi
trap - TERM INT HUP
# Taken and named in one piece: a stop signal (the run interrupted) is
# ignored from just before the mkdir that takes the lock until the owner is
# written, or a signal between the two would leave a lock nobody can name
# (a trap set after mkdir comes too late: the signal may land while mkdir
# runs, and the shell runs the trap before the next command). While it
# waits for another holder, a signal stops it at once.
until trap '' TERM INT HUP; mkdir -m 700 -- "$lock" 2> /dev/null; do
    trap - TERM INT HUP
    if [ ! -e "$state" ] && [ ! -L "$state" ]; then
        # Destroyed while this run waited: it is made anew, as by a first deploy.
        mkdir -p -- "${state%/*}" && mkdir -m 755 -- "$state" 2> /dev/null
        [ ! -d "$state" ] || [ -L "$state" ] || continue
    elif [ ! -e "$lock" ] && [ ! -L "$lock" ] && [ -d "$state" ] && [ ! -L "$state" ]; then
        continue  # released between the two looks
    fi
    if [ -L "$lock" ] || [ ! -d "$lock" ]; then
        echo "$lock exists and is not a lock deployer made; deployer will not use it (move it aside)" >&2
        exit 1
    fi
    now=$(date +%s)
    if [ $((now - start)) -ge "$wait" ]; then
        since=$(stat -c %Y -- "$lock" 2> /dev/null || echo "$now")
        held=$(sed -n 2p -- "$lock/owner" 2> /dev/null) || held=
        echo "locked by ${held:-a run that is taking or releasing the lock}, $((now - since)) s ago; $hint" >&2
        exit 1
    fi
    sleep 1
done
if ! { printf '%s\n%s\n' "$run" "$owner" > "$lock/owner.new" && mv -f -- "$lock/owner.new" "$lock/owner"; }
then
    rm -rf -- "$lock"  # ours, a moment old: a lock nobody can name would hold the instance for good
    echo "cannot write $lock/owner (full disk?)" >&2
    exit 1
fi
trap - TERM INT HUP
