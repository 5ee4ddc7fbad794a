#!/bin/sh
# The offer withdrawn: the copy removed, and the key's line removed from
# authorized_keys through a new file renamed over it (readers see the old
# file or the new one, never a part), under the lock `offer` takes. The
# line is the one whose last field is the tag, compared as a string (from
# the environment: `awk -v` would expand backslashes), never as a pattern.
relay=$1 tag=$2 keys=$HOME/.ssh/authorized_keys
rm -rf -- "$relay"
[ -f "$keys" ] && [ ! -L "$keys" ] || exit 0
export DEPLOYER_TAG="$tag"
awk '$NF == ENVIRON["DEPLOYER_TAG"] { found = 1; exit } END { exit !found }' "$keys" || exit 0
(flock -w 10 9 || exit 1
 was=$(stat -c '%i %s %y' -- "$keys")
 new=$(mktemp -- "$keys.XXXXXX") || exit 1
 # Not over a change another tool made meanwhile (it takes no lock of ours).
 awk '$NF != ENVIRON["DEPLOYER_TAG"]' "$keys" > "$new" && chmod --reference="$keys" -- "$new" \
     && [ "$(stat -c '%i %s %y' -- "$keys")" = "$was" ] \
     && mv -f -- "$new" "$keys" || { rm -f -- "$new"; exit 1; }) 9< "$HOME/.ssh" && exit 0
echo "could not remove the relay key $tag from $keys (it expires by itself)" >&2
exit 1
