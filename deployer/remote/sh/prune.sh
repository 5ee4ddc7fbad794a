#!/bin/sh
# After a successful deploy: the newest `keep` releases stay, and the live
# one and the one before it, whatever their age: the one before it by name,
# and the one that was live before it, as the history says (after a
# rollback, that is not the one before it by name). Releases are named by
# their time (UTC), so sorting by name is by age; names of runs still being
# made (a dot first) are never matched.
releases=$1 live=$2 keep=$3 history=$4
cd -- "$releases" 2> /dev/null || exit 0
current=$(readlink -- "$live" 2> /dev/null) || current=
current=${current##*/}
before=
# shellcheck disable=SC2010 # ls -q: a name with a newline in it stays one line, which the release pattern then refuses.
for r in $(ls -1q | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$' | sort); do
    [ "$r" = "$current" ] && break
    before=$r
done
was=$(awk -F '\t' -v now="$current" '$3 == "done" && $4 != now && $4 ~ /^[0-9]+T[0-9]+Z-[0-9a-f]+$/ { p = $4 }
    END { print p }' "$history" 2> /dev/null) || was=
# shellcheck disable=SC2010 # as above
ls -1q | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$' | sort -r | tail -n +"$((keep + 1))" |
while IFS= read -r r; do
    [ "$r" = "$current" ] || [ "$r" = "$before" ] || [ "$r" = "$was" ] || rm -rf -- "$r"
done
