#!/bin/sh
# The live releases of the other instances under the deploy root of the
# instance whose live link is $1, newest first, one path a line: a new
# instance (a demo beside staging) links the files it shares with one
# instead of unpacking them all. Only what is all deployer's and this
# user's is listed: a link named as a config name, to a release named as
# deployer names them in that instance's own `.releases`, both directories
# (not links) owned by this user, with a file list owned by this user.
# Whether each of its files is this user's is for live-state.sh to say: one
# that is not is sent, never linked (another user could write through it).
seeds() {
    seed_self=$1
    for seed_link in "${seed_self%/*}"/*; do
        if [ "$seed_link" = "$seed_self" ] || [ ! -L "$seed_link" ]; then
            continue
        fi
        seed_to=$(readlink -- "$seed_link") || continue
        seed_release=${seed_to#"$seed_link.releases/"}
        [ "$seed_release" != "$seed_to" ] && printf '%s %s\n' "$seed_release" "$seed_link"
    done | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+ .*/[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' | LC_ALL=C sort -r |
        while IFS=' ' read -r seed_release seed_link; do
            seed_to=$seed_link.releases/$seed_release
            if [ -d "$seed_link.releases" ] && [ ! -L "$seed_link.releases" ] && [ -O "$seed_link.releases" ] &&
                    [ -d "$seed_to" ] && [ ! -L "$seed_to" ] && [ -O "$seed_to" ] &&
                    [ -f "$seed_to/.deployer-sums" ] && [ ! -L "$seed_to/.deployer-sums" ] &&
                    [ -O "$seed_to/.deployer-sums" ]; then
                printf '%s\n' "$seed_to"
            fi
        done
}
