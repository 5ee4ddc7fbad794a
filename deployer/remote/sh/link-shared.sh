#!/bin/sh
# Each shared path of the new release made a link to the instance's shared
# directory: what the release holds there (from the package) goes, what is
# in the shared directory is never touched; a directory missing there is
# made (group-writable and setgid when `group` is set: the app writes
# there), and a file to create (a SQLite database) is made empty. The
# release is this run's own, but its directories came from the
# package: one that is a link could lead the removal out of the release,
# so none on the way may be one.
set -eu
release=$1 shared=$2 group=$3
shift 3
# A writable folder (w:): the folder itself belongs to `group`, setgid and
# group-writable, so that all made in it later belongs to the group; and
# what the deploy user already made in it (migrate, a hook, an earlier
# deploy) is given to the group with chgrp -h from within its own folder
# (find -execdir), so neither the file nor a folder on the way can be a
# link swapped in meanwhile by the web server, which may write there.
# Making those files group-writable would take chmod, which follows a
# link: deployer only counts them, and says how to fix them once. What
# another user owns (the web server's uploads, or the folder itself) is
# theirs: a folder of theirs that is not the group's, setgid and
# group-writable is reported, not changed.
writable() {
    if [ -L "$1" ] || [ ! -d "$1" ]; then
        echo "$1 is not a folder (a link?); deployer will not make it writable" >&2
        exit 1
    fi
    me=$(id -u)
    if [ -n "$(find "$1" -maxdepth 0 -user "$me")" ]; then
        chgrp -- "$group" "$1"
        chmod 2775 "$1"
    elif [ -z "$(find "$1" -maxdepth 0 -group "$group" -perm -2070)" ]; then
        echo "note: $1 belongs to another user, and is not setgid and group-writable for group $group"
    fi
    find "$1" -mindepth 1 -user "$me" ! -group "$group" -execdir chgrp -h -- "$group" {} + 2> /dev/null || :
    left=$(find "$1" -mindepth 1 -user "$me" \( -type d ! -perm -2070 -o -type f ! -perm -060 \) -print |
        wc -l)
    if [ "$left" -gt 0 ]; then
        echo "note: $left file(s) or folder(s) in $1 that $(id -un) made are not writable for group $group;" \
             "fix them once, when nothing else writes there: find '$1' -user $(id -un) \\( -type d -exec" \
             "chmod g+rwxs {} + -o -type f -exec chmod g+rw {} + \\)"
    fi
}
made_dir() {
    mkdir -p -- "$1"
    if [ -n "$group" ]; then
        chgrp -- "$group" "$1"
        chmod 2775 "$1"
    fi
}
# A file made empty if missing (c:, a SQLite database): with noclobber,
# the shell creates it with O_EXCL, so it is never one that appeared
# meanwhile, nor a link's target.
made_file() {
    if [ -L "$shared/$1" ] || { [ -e "$shared/$1" ] && [ ! -f "$shared/$1" ]; }; then
        echo "$shared/$1 is not a file (a link?); deployer will not link it" >&2
        exit 1
    fi
    if [ ! -f "$shared/$1" ]; then
        # Its folder is not made the group's: the web server would then be
        # able to replace what else is there.
        mkdir -p -- "$(dirname -- "$shared/$1")"
        # Another host may make it at the same moment (a shared root on NFS).
        (umask 077 && set -C && : > "$shared/$1") 2> /dev/null || [ -f "$shared/$1" ] || {
            echo "cannot make $shared/$1" >&2
            exit 1
        }
    fi
    # Every time, for a file of the deploy user's: a group set later, or a
    # chgrp that failed once, is put right by the next deploy.
    if [ -n "$group" ] && [ -n "$(find "$shared/$1" -maxdepth 0 -type f -user "$(id -u)")" ]; then
        chgrp -h -- "$group" "$shared/$1"
        chmod 660 "$shared/$1"
    fi
}
for entry in "$@"; do
    kind=${entry%%:*} rel=${entry#*:}
    at=$release
    rest=$rel
    while [ "${rest#*/}" != "$rest" ]; do
        at=$at/${rest%%/*} rest=${rest#*/}
        if [ -L "$at" ] || { [ -e "$at" ] && [ ! -d "$at" ]; }; then
            echo "${at#"$release"/} in the release is not a directory; cannot link $rel there" >&2
            exit 1
        fi
    done
    if [ "$kind" = c ]; then
        made_file "$rel"
    elif [ "$kind" != f ] && [ ! -d "$shared/$rel" ]; then
        made_dir "$shared/$rel"
    fi
    if [ "$kind" = w ]; then
        writable "$shared/$rel"
    fi
    mkdir -p -- "${release}/$(dirname -- "$rel")"
    rm -rf -- "${release:?}/$rel"
    ln -s -- "$shared/$rel" "$release/$rel"
done
echo "linked $# shared path(s) from $shared"
