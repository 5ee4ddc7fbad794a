#!/bin/sh
# The app's side of `deployer check`, after check.sh in the same session:
# rows "check KEY ok|failed DETAIL" (and "check KEY + TEXT" lines), exit 0
# whatever it finds. Read-only, as check.sh.
#   python: the interpreter is the one the wheels are chosen for
#           (lib/python-check.sh), if INTERPRETER is not "".
#   shared: the shared files are there, and each writable folder is the
#           web server's group's, setgid and group-writable, or will be
#           made so by the next deploy (a folder of the deploy user's).
#   django: in the live release, with its virtualenv first on PATH and its
#           exported vars, as migrate runs: `PYTHON manage.py check --deploy
#           --database default`, which imports the project (settings,
#           apps, URLs) and asks its database. PYTHON "" or no manage.py:
#           nothing to ask.
# Arguments: LIVE SHARED GROUP PYTHON EXPORTS (1: the release has
# .deployer-env) INTERPRETER VERSION MACHINE GLIBC, then f:FILE and w:FOLDER
# entries.
live=$1 shared=$2 group=$3 python=$4 exports=$5 interpreter=$6 version=$7 machine=$8 glibc=$9
shift 9
. ./lib/python-check.sh
if [ -n "$interpreter" ]; then
    if said=$(python_check "$interpreter" "$version" "$machine" "$glibc" 2>&1); then
        echo "check python ok $said"
    else
        echo "check python failed $(printf '%s' "$said" | head -c 400 | tr -d '\n')"
    fi
fi
missing='' unwritable='' later=''
me=$(id -u)
for entry in "$@"; do
    kind=${entry%%:*} rel=${entry#*:}
    at=$shared/$rel
    if [ "$kind" = f ]; then
        [ -f "$at" ] || missing="$missing $rel"
    elif [ ! -d "$at" ] || [ -n "$(find "$at" -maxdepth 0 -user "$me")" ]; then
        # Made, or given to the group, by the next deploy.
        [ -n "$(find "$at" -maxdepth 0 -group "$group" -perm -2070 2> /dev/null)" ] || later="$later $rel"
    elif [ -z "$(find "$at" -maxdepth 0 -group "$group" -perm -2070)" ]; then
        unwritable="$unwritable $rel"
    fi
done
if [ $# -gt 0 ]; then
    if [ -n "$missing" ]; then
        echo "check shared failed missing in $shared (deployer never writes them):$missing"
    elif [ -n "$unwritable" ]; then
        echo "check shared failed not setgid and writable for group $group, and another user owns them:$unwritable"
    elif [ -n "$later" ]; then
        echo "check shared ok the next deploy makes these writable for group $group:$later"
    else
        echo "check shared ok every shared file is there; the writable folders are group $group's"
    fi
fi
if [ -z "$python" ]; then
    echo "check django ok migrate: is not PYTHON manage.py migrate: nothing to ask"
elif ! cd -- "$live" 2> /dev/null; then
    echo "check django ok not deployed yet: the first deploy's migrate asks the database"
elif [ ! -f manage.py ]; then
    echo "check django ok no manage.py in the live release: nothing to ask"
else
    if [ -d .venv ]; then
        VIRTUAL_ENV=$live/.venv PATH=$live/.venv/bin:$PATH
        export VIRTUAL_ENV PATH
    fi
    # In a shell of its own, as migrate runs: the exported vars (the
    # release's file, mode 0600, when the target exports any) cannot touch
    # this script's variables. Only the end of what it says is kept, and
    # its exit status on the last line.
    out=$(sh -c '
        if [ "$1" = 1 ]; then set -a; . ./.deployer-env; set +a; fi
        "$2" manage.py check --deploy --database default 2>&1 < /dev/null
        echo "exit $?"' sh "$exports" "$python" | tail -c 20000)
    code=${out##*exit }
    out=${out%exit*}
    if [ "$code" = 0 ]; then
        echo "check django ok $(printf '%s\n' "$out" | grep . | tail -n 1 | head -c 300)"
        printf '%s\n' "$out" | grep '^?: \|^[A-Za-z0-9_.]*: (' | head -n 15 | head -c 3000 | sed 's/^/check django + /'
    else
        echo "check django failed manage.py check --deploy --database default, exit code $code:"
        printf '%s\n' "$out" | grep . | tail -n 15 | head -c 3000 | sed 's/^/check django + /'
    fi
fi
exit 0
