#!/bin/sh
# A run that is gone (its runner was killed) may have left a command
# running on the host: its SSH session closed, but nothing stops a migrate
# that writes nothing. Every session of a run carries the run's id as its
# first argument (see session.sh): each one's process group is stopped as
# stop.sh does. Only this user's processes are visible to /proc here.
. ./lib/stop-group.sh
run=$1 grace=$2
groups=
for d in /proc/[0-9]*; do
    # Arguments one a line (a newline inside one, as in the script, a space).
    [ "$(tr '\0\n' '\n ' 2> /dev/null < "$d/cmdline" | sed -n '4,5p' | tr '\n' ' ')" = "deployer-session $run " ] \
        || continue
    group=$(sed 's/.*) //' "$d/stat" 2> /dev/null | cut -d ' ' -f 3) || continue
    # shellcheck disable=SC2015 # either test failing skips the process
    [ -n "$group" ] && [ "$group" != "$(sed 's/.*) //' /proc/self/stat | cut -d ' ' -f 3)" ] || continue
    groups="$groups $group"
done
[ -n "$groups" ] || exit 0
for g in $groups; do stop_group "$g" "$grace" & done
wait
echo "stopped what run $run still ran (process groups$groups)"
