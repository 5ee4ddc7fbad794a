"""The small shell programs deployer runs on hosts to change files safely.

Each program is constant text; everything that varies (paths, names, the
mark) is passed as a positional argument and quoted by `Command`, so no value
is ever spliced into shell code. Names that deployer creates beside a file
are random per run (`Context.run_id`) and created exclusively (`ln`, `mkdir`,
`mktemp` all fail on an existing name and never write through a link), so a
file or link planted at a name we use can only make the step fail.
"""

from deployer.quoting import Command

# The previous file is kept as a hard link: the same inode, so a rollback
# restores its content, mode and owner exactly, and nothing is read into
# memory (a link to /dev/zero or a FIFO cannot exhaust or hang us: they are
# refused before anything reads them).
_INSTALL = r"""set -eu
path=$1 mark=$2 mode=$3 owner=$4 backup=$5 created=$6
dir=${path%/*}
mkdir -p -- "$dir"
if [ -L "$path" ]; then
    echo "$path is a symbolic link; deployer will not write through it (remove it)" >&2
    exit 1
elif [ -e "$path" ]; then
    if [ ! -f "$path" ]; then
        echo "$path exists and is not a regular file; deployer will not replace it" >&2
        exit 1
    fi
    if [ "$(wc -c < "$path")" -gt 1048576 ]; then
        echo "$path is larger than 1 MiB; deployer will not replace it (move it aside)" >&2
        exit 1
    fi
    if [ "$(head -n 1 -- "$path")" != "$mark" ]; then
        echo "$path was not written by deployer (its first line is not '$mark');" \
             "deployer will not replace it: move it aside, or deploy under another config name" >&2
        exit 1
    fi
    ln -T -- "$path" "$backup"
else
    mkdir -- "$created"
fi
tmp=$(mktemp -- "$dir/.deployer-XXXXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod "$mode" "$tmp"
if [ -n "$owner" ]; then chown -- "$owner" "$tmp"; fi
mv -fT -- "$tmp" "$path"
trap - EXIT
"""

# Safe whether or not the install got as far as changing anything.
_RESTORE = r"""path=$1 backup=$2 created=$3
if [ -f "$backup" ] && [ ! -L "$backup" ]; then
    mv -fT -- "$backup" "$path"
elif [ -d "$created" ] && [ ! -L "$created" ]; then
    rm -f -- "$path" && rmdir -- "$created"
fi
"""

# rename(2) over the old link is atomic: a reader sees the old target or the
# new one, never a missing path. `ln -s` without -f fails on any existing
# name (-T: not even a directory, which it would otherwise put the link
# into), and `mv -T` will not move a link into a directory planted at `path`.
_RELINK = r"""set -eu
path=$1 target=$2 tmp=$3
mkdir -p -- "${path%/*}"
ln -sT -- "$target" "$tmp"
mv -fT -- "$tmp" "$path" || { rm -f -- "$tmp"; exit 1; }
"""

# Name-based virtual hosts: Apache answers a Host header from the first
# site whose ServerName or ServerAlias matches it (wildcards included), so a
# second site with the same name takes another's traffic, or loses its own.
_NAME_IS_FREE = r"""dir=$1 own=$2 host=$3
[ -d "$dir" ] || exit 0
taken=
for f in "$dir"/*.conf; do
    [ -f "$f" ] || continue
    [ "${f##*/}" = "$own" ] && continue
    if awk -v host="$host" '
        tolower($1) == "servername" || tolower($1) == "serveralias" {
            for (i = 2; i <= NF; i++) {
                name = tolower($i); sub(/^[a-z][a-z0-9+.-]*:\/\//, "", name); sub(/:[0-9*]+$/, "", name)
                pat = name; gsub(/\./, "\\.", pat); gsub(/\*/, ".*", pat); gsub(/\?/, ".", pat)
                if (tolower(host) ~ ("^" pat "$")) { found = 1; exit }
            }
        }
        END { exit !found }' "$f"; then
        taken="$taken ${f##*/}"
    fi
done
if [ -n "$taken" ]; then
    echo "$host is already served by$taken in $dir; deployer will not take a site from another" \
         "instance (destroy that one first, or use another hostname)" >&2
    exit 1
fi
"""


def _program(name: str, text: str, *args: str) -> Command:
    return Command.of(("sh", "-c", text, name, *args))


def install(path: str, mark: str, mode: int, owner: str, backup: str, created: str) -> Command:
    """Write stdin to `path` through a temp file renamed over it, refusing a
    path deployer did not write (its first line is not `mark`)."""
    return _program("deployer-install", _INSTALL, path, mark, f"{mode:o}", owner, backup, created)


def restore(path: str, backup: str, created: str) -> Command:
    """Undo `install`: the previous file back, or no file if there was none."""
    return _program("deployer-restore", _RESTORE, path, backup, created)


def forget(backup: str, created: str) -> Command:
    """Once the new file is kept: what `restore` would have needed goes."""
    return Command.of(("rm", "-rf", "--", backup, created))


def relink(path: str, target: str, tmp: str) -> Command:
    return _program("deployer-relink", _RELINK, path, target, tmp)


def name_is_free(sites_enabled: str, own: str, hostname: str) -> Command:
    return _program("deployer-check-name", _NAME_IS_FREE, sites_enabled, own, hostname)
