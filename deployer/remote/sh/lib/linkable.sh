#!/bin/sh
# The files of release $1 that a new release may link, as "<mode> <path>"
# lines to match the "<sha256> <mode> <path>" lines of its list: regular
# files of this user's, mtime 0 (as unpacked), writable by no one else,
# reached only through folders of this user's that no one else may write
# (find -P never follows a link): no other user can change what a path
# leads to, nor write the file once it is linked. A listed file that is not
# here (changed in place, given another mode, gone, behind a link) is sent.
linkable() {
    (cd -- "$1" && find . \( -type d \( ! -user "$(id -u)" -o -perm /022 \) -prune \) -o \
        \( -type f -user "$(id -u)" ! -perm /022 ! -newermt @0 \
        \( -perm -100 -printf '755 %P\n' -o -printf '644 %P\n' \) \))
}

# The paths of list $2's files ("<sha256> <mode> <path>" lines) that release
# $1 may not give a new release: they are sent, or the unpack fails.
unlinkable() {
    linkable "$1" | awk 'FILENAME == ARGV[1] { ok[$0] = 1; next }
        { line = $0; sub(/^[^ ]* /, "", line); if (!(line in ok)) { sub(/^[^ ]* /, "", line); print line } }' \
        - "$2"
}
