#!/bin/sh
# Several steps in one remote shell: one SSH session per host for a group
# of steps instead of one each (a session costs a process start on the host
# and a round trip). Each argument pair is a step's own command line and
# whether it reads stdin. stdin starts with a token line (random per session,
# so no output can fake the end of a step; on stdin, not in the arguments,
# so `ps` on the host does not show it), then each reading step's bytes
# after their length on a line: `head -c` reads exactly that many, and
# what the step leaves unread is drained, so the next step starts at its
# own bytes. After each step the script writes "\n<token> <index> <exit
# code>\n" to stdout and to stderr, which the runner splits the output on;
# it stops at the first step that fails.
IFS= read -r token || exit 1
shift  # the run's id: there for `ps` and for stop_run
i=0
while [ "$#" -gt 1 ]; do
    line=$1 input=$2
    shift 2
    if [ "$input" = 1 ]; then
        if ! IFS= read -r size; then
            echo "deployer: the input of step $i ended early" >&2
            exit 1
        fi
        head -c "$size" | { sh -c "$line"; code=$?; cat > /dev/null; exit "$code"; }
    else
        sh -c "$line" < /dev/null
    fi
    code=$?
    printf '\n%s %s %s\n' "$token" "$i" "$code"
    printf '\n%s %s %s\n' "$token" "$i" "$code" >&2
    [ "$code" = 0 ] || exit "$code"
    i=$((i + 1))
done
