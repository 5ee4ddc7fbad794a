#!/bin/sh
# Whether the file `path` is deployer's to replace: there is none, or it is
# a regular file of at most 1 MiB whose first line is `mark`; if not, says
# why on stderr. Nothing of it is read before it is known to be a regular
# file: a link to /dev/zero or a FIFO is refused before anything reads it.
ours() {
    if [ -L "$1" ]; then
        echo "$1 is a symbolic link; deployer will not write through it (remove it)" >&2
        return 1
    fi
    [ -e "$1" ] || return 0
    if [ ! -f "$1" ]; then
        echo "$1 exists and is not a regular file; deployer will not replace it" >&2
        return 1
    fi
    if [ "$(wc -c < "$1")" -gt 1048576 ]; then
        echo "$1 is larger than 1 MiB; deployer will not replace it (move it aside)" >&2
        return 1
    fi
    if [ "$(head -n 1 -- "$1")" != "$2" ]; then
        echo "$1 was not written by deployer (its first line is not '$2');" \
             "deployer will not replace it: move it aside, or deploy under another config name" >&2
        return 1
    fi
}
