#!/bin/sh
# Destroy, once Apache no longer serves the instance: its releases, live
# path, what it kept for an undo, and (unless kept) its shared files, but
# for those named after `shared` (shared/files of targets.yaml: placed by
# hand, never written by deployer), which stay where they are. The live
# path is removed only as the link deployer made. Inside the shared folder
# the web server may write (uploads), and may swap a folder for a link
# while this runs: find deletes each file relative to the folder it has
# open (-delete), and a kept file is told by its inode (-samefile), never
# by its name as a pattern.
live=$1 releases=$2 shared=$3
shift 3
if [ -L "$live" ]; then rm -f -- "$live"
elif [ -e "$live" ]; then echo "$live is not a symbolic link; deployer left it" >&2; fi
if [ -L "$releases" ]; then rm -f -- "$releases"; elif [ -d "$releases" ]; then rm -rf -- "$releases"; fi
if [ -L "$shared" ]; then
    rm -f -- "$shared"
elif [ -n "$shared" ] && [ -d "$shared" ]; then
    kept=
    for keep do
        if [ -f "$shared/$keep" ] && [ ! -L "$shared/$keep" ]; then
            kept="$kept $keep"
            set -- "$@" ! -samefile "$shared/$keep"
        fi
        shift
    done
    find "$shared" -mindepth 1 -depth ! -type d "$@" -delete
    find "$shared" -mindepth 1 -depth -type d -empty -delete
    rmdir -- "$shared" 2> /dev/null ||
        echo "left in $shared:${kept:- what deployer could not remove}${kept:+ (placed by hand)}"
fi
rm -rf -- "$live".deployer-*
