#!/bin/sh
# The run's last commands on this host, in the session of its last steps
# (see run/held.py): what they are (tidying, pruning, the history line and
# the lock's release) depends on how the whole run went, so the runner
# sends them on stdin only once it is over. Read whole, then run with no
# stdin; an empty input runs nothing.
script=$(cat) || exit 1
[ -n "$script" ] || exit 0
exec sh -c "$script" deployer-run-end < /dev/null
