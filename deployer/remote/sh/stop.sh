#!/bin/sh
# Stop the process group $1 (a step's command on this host): TERM, then KILL
# after $2 seconds, and return only once none of it is left.
# shellcheck source=lib/stop-group.sh
. ./lib/stop-group.sh
stop_group "$1" "$2"
