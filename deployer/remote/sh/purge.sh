#!/bin/sh
# Destroy, once Apache no longer serves the instance: its releases, live
# path, what it kept for an undo, and (unless kept) its shared files. The
# live path is removed only as the link deployer made.
live=$1 releases=$2 shared=$3
if [ -L "$live" ]; then rm -f -- "$live"
elif [ -e "$live" ]; then echo "$live is not a symbolic link; deployer left it" >&2; fi
for p in "$releases" "$shared"; do
    [ -n "$p" ] || continue
    if [ -L "$p" ]; then rm -f -- "$p"; elif [ -d "$p" ]; then rm -rf -- "$p"; fi
done
rm -rf -- "$live".deployer-*
