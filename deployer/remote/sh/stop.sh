#!/bin/sh
# Stop the process group $1 (a step's command on this host): TERM, then KILL
# after $2 seconds, and return only once none of it is left.
. ./lib/stop-group.sh
stop_group "$1" "$2"
