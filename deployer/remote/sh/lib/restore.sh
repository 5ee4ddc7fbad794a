#!/bin/sh
# Undo an install (install.sh, or apache.sh's promote) of `path`, from what
# it kept in `work`: the previous file back (the same inode: content, mode
# and owner), or no file if there was none. Safe in every state an install
# can stop in, including never started.
restore_file() {
    [ -d "$2" ] && [ ! -L "$2" ] || return 0
    if [ -f "$2/previous" ]; then
        # shellcheck disable=SC3013 # dash's, bash's and busybox's test all have -ef
        if [ ! "$2/previous" -ef "$1" ]; then mv -fT -- "$2/previous" "$1" || return 1; fi
    elif [ -e "$2/none" ]; then
        rm -f -- "$1" || return 1
    fi
    rm -rf -- "$2"
}
