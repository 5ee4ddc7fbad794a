#!/bin/sh
# Before anything changes: the hosts' Python is the one the wheels were
# chosen for (see lib/python-check.sh).
. ./lib/python-check.sh
python_check "$@"
