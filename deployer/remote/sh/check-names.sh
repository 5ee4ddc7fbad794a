#!/bin/sh
# Name-based virtual hosts: Apache answers a Host header from the first
# site whose ServerName or ServerAlias matches it (wildcards included), so a
# second site with the same name takes another's traffic, or loses its own.
# Names go to awk through the environment: `awk -v` would expand backslashes.
# A name that is not a plain host name pattern can match no host we serve;
# an awk that fails counts as a conflict, never as "free". A site deployer
# enabled is a stub (NAME.stub) that includes its vhost, NAME.conf, beside it.
apache=$1 own=$2
shift 2
dir=$apache/sites-enabled
[ -d "$dir" ] || exit 0
taken=
for f in "$dir"/*.conf; do
    [ -f "$f" ] || continue
    [ "${f##*/}" = "$own.conf" ] && continue
    stub=$(readlink -f -- "$f")
    case "$stub" in *.stub) [ ! -f "${stub%.stub}.conf" ] || f=${stub%.stub}.conf ;; esac
    hit=$(DEPLOYER_NAMES="$*" awk '
        function pattern(name,    out, i, c) {
            out = ""
            for (i = 1; i <= length(name); i++) {
                c = substr(name, i, 1)
                if (c == "*") out = out ".*"
                else if (c == "?") out = out "."
                else if (c == ".") out = out "[.]"
                else if (c ~ /[a-z0-9_-]/) out = out c
                else return ""
            }
            return "^" out "$"
        }
        function clean(name) {
            name = tolower(name)
            gsub(/"/, "", name)
            sub(/^[a-z][a-z0-9+.-]*:\/\//, "", name)
            sub(/:[0-9*]+$/, "", name)
            return name
        }
        BEGIN {
            n = split(ENVIRON["DEPLOYER_NAMES"], ours, " ")
            for (j = 1; j <= n; j++) mine[j] = pattern(ours[j])
        }
        { sub(/\r$/, "") }
        /\\$/ { held = held substr($0, 1, length($0) - 1) " "; next }
        held != "" { $0 = held $0; held = "" }
        tolower($1) == "servername" || tolower($1) == "serveralias" {
            for (i = 2; i <= NF; i++) {
                theirs = clean($i); p = pattern(theirs)
                for (j = 1; j <= n; j++)
                    if (theirs == ours[j] || (p != "" && ours[j] ~ p) || (mine[j] != "" && theirs ~ mine[j])) {
                        print ours[j]; found = 1; exit
                    }
            }
        }
        END { exit !found }' "$f")
    case $? in
    0) taken="$taken ${f##*/} ($hit)" ;;
    1) ;;
    *) taken="$taken ${f##*/} (unreadable)" ;;
    esac
done
if [ -n "$taken" ]; then
    echo "a name this site would serve is already served by$taken in $dir; deployer will not take" \
         "a site from another instance (destroy that one first, or use another name)" >&2
    exit 1
fi
