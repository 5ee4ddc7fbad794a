#!/bin/sh
# The instance's vhost as the host has it, and whether DEPLOY_PATH is a link
# the switch may replace. Only a regular file the install would replace is
# read (not a link, a FIFO or anything over the limit), as base64: the
# session's output is text, and the vhost any bytes. What the login user
# cannot read is said, never failed on. Reads only.
live=$1 conf=$2 limit=$3
if [ -e "$live" ] && [ ! -L "$live" ]; then echo "live-not-link"; fi
dir=${conf%/*}
if [ -d "$dir" ] && [ ! -x "$dir" ]; then
    echo "vhost unreadable"
elif [ -L "$conf" ]; then
    echo "vhost link"
elif [ ! -e "$conf" ]; then
    echo "vhost absent"
elif [ ! -f "$conf" ]; then
    echo "vhost special"
elif ! size=$(wc -c 2> /dev/null < "$conf"); then
    echo "vhost unreadable"
elif [ "$size" -gt "$limit" ]; then
    echo "vhost large $size"
elif data=$(base64 -w 0 2> /dev/null < "$conf"); then
    echo "vhost file $data"
else
    echo "vhost unreadable"
fi
