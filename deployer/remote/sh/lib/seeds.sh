#!/bin/sh
# The live releases of the other instances under the deploy root of the
# instance whose live link is $1, newest first, one path a line: a new
# instance (a demo beside staging) links the files it shares with one
# instead of unpacking them all. Only what is all deployer's and this
# user's is listed: a link named as a config name, to a release named as
# deployer names them in that instance's own `.releases`, both directories
# (not links) of this user's that no one else may write, with a file list
# of this user's. Which of its files may be linked is lib/linkable.sh's to
# say.
seeds() {
    seed_self=$1
    for seed_link in "${seed_self%/*}"/*; do
        if [ "$seed_link" = "$seed_self" ] || [ ! -L "$seed_link" ]; then
            continue
        fi
        seed_to=$(readlink -- "$seed_link") || continue
        seed_release=${seed_to#"$seed_link.releases/"}
        [ "$seed_release" != "$seed_to" ] && printf '%s %s\n' "$seed_release" "$seed_link"
    done | LC_ALL=C grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+ .*/[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' |
        LC_ALL=C sort -r | while IFS=' ' read -r seed_release seed_link; do
            seed_to=$seed_link.releases/$seed_release
            # Read back whole: a name with a space or a line break in it is not split into another.
            if [ "$(readlink -- "$seed_link")" = "$seed_to" ] &&
                    [ -d "$seed_link.releases" ] && [ ! -L "$seed_link.releases" ] &&
                    [ -d "$seed_to" ] && [ ! -L "$seed_to" ] &&
                    [ -z "$(find "$seed_link.releases" "$seed_to" -maxdepth 0 \
                        \( ! -user "$(id -u)" -o -perm /022 \))" ] &&
                    [ -f "$seed_to/.deployer-sums" ] && [ ! -L "$seed_to/.deployer-sums" ] &&
                    [ -O "$seed_to/.deployer-sums" ]; then
                printf '%s\n' "$seed_to"
            fi
        done
}
