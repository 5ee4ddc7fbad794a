#!/bin/sh
# Undo install.sh: see lib/restore.sh.
. ./lib/restore.sh
restore_file "$1" "$2" || exit 1
