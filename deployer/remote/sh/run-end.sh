#!/bin/sh
# The run's last commands on this host, in the session of its last steps
# (see run/held.py): what they are (tidying, pruning, the history line and
# the lock's release) depends on how the whole run went, so the runner
# sends them on stdin only once it is over, ending with a line "# MARK"
# ($1, random per session). Input cut short (the connection closed while
# it came) lacks that line and runs nothing. Read whole, the mark is
# echoed first, so the runner knows the commands ran here and does not run
# them again; then they run, with no stdin.
mark=$1
script=$(cat) || exit 1
end=$(printf '\n# %s' "$mark")  # (a line of its own that starts with "#" would not be sent)
case $script in
    *"$end") ;;
    *)
        echo "deployer: the run's last commands came cut short; none of them ran" >&2
        exit 1
        ;;
esac
printf '%s\n' "$mark"
exec sh -c "$script" deployer-run-end < /dev/null
