#!/bin/sh
# Every instance deployer made under a deploy root, one line each,
# tab-separated: name, live release ("-"), releases kept, its vhost
# (enabled, available or -), the lock's age in seconds (-), the live link's
# age in seconds (-); then, for each, the last line of its history that
# made a release live. Names that are not config names are not deployer's.
root=$1 apache=$2 mark=$3
cd -- "$root" 2> /dev/null || exit 0
now=$(date +%s)
for d in *.releases *.deployer; do
    [ -d "$d" ] && [ ! -L "$d" ] && printf '%s\n' "${d%.*}"
done | grep -E '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' | sort -u | while IFS= read -r n; do
    live=$(readlink -- "$n" 2> /dev/null) && live=${live##*/} || live=-
    # shellcheck disable=SC2010 # ls -q: a name with a newline in it stays one line, which the release pattern then refuses.
    count=$(ls -1q -- "$n.releases" 2> /dev/null | grep -cE '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$')
    vhost=-
    # shellcheck disable=SC2059 # the mark is the runner's format, with %s for the name
    if [ -f "$apache/sites-available/$n.conf" ] && [ ! -L "$apache/sites-available/$n.conf" ] &&
            [ "$(head -n 1 -- "$apache/sites-available/$n.conf" 2> /dev/null)" = "$(printf "$mark" "$n")" ]; then
        vhost=available
        [ -L "$apache/sites-enabled/$n.conf" ] && vhost=enabled
    fi
    # Either may go while this reads (a run ends): then it is not there.
    lock=- since=-
    if t=$(stat -c %Y -- "$n.deployer/lock" 2> /dev/null); then lock=$((now - t)); fi
    if [ -L "$n" ] && t=$(stat -c %Y -- "$n" 2> /dev/null); then since=$((now - t)); fi
    printf 'instance\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$live" "$count" "$vhost" "$lock" "$since"
    awk -F '\t' '$3 == "done" && $4 ~ /^[0-9]+T[0-9]+Z-[0-9a-f]+$/ { last = $0 }
        END { if (last != "") print last }' "$n.deployer/history" 2> /dev/null | sed "s/^/last\t$n\t/"
done
exit 0
