#!/bin/sh
# Destroy, once Apache no longer serves the instance: its releases, live
# path, what it kept for an undo, and (unless kept) its shared files, but
# for those named after `shared` (shared/files of targets.yaml: placed by
# hand, never written by deployer), which stay where they are. The live
# path is removed only as the link deployer made.
live=$1 releases=$2 shared=$3
shift 3
if [ -L "$live" ]; then rm -f -- "$live"
elif [ -e "$live" ]; then echo "$live is not a symbolic link; deployer left it" >&2; fi
if [ -L "$releases" ]; then rm -f -- "$releases"; elif [ -d "$releases" ]; then rm -rf -- "$releases"; fi
if [ -L "$shared" ]; then
    rm -f -- "$shared"
elif [ -n "$shared" ] && [ -d "$shared" ]; then
    # Each kept path is compared as a whole line, never as a pattern.
    keep=$(printf '%s\n' "$@")
    find "$shared" -mindepth 1 -depth ! -type d -exec sh -c '
        shared=$1 keep=$2
        shift 2
        for f do
            printf "%s\n" "$keep" | grep -qxF -- "${f#"$shared"/}" || rm -f -- "$f"
        done' sh "$shared" "$keep" {} +
    find "$shared" -mindepth 1 -depth -type d -empty -exec rmdir -- {} +
    rmdir -- "$shared" 2> /dev/null || echo "kept the shared files placed by hand in $shared: $*"
fi
rm -rf -- "$live".deployer-*
