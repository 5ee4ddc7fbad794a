"""The small shell programs deployer runs on hosts to change files safely.

Each program is constant text; everything that varies (paths, names, the
mark) is passed as a positional argument and quoted by `Command`, so no value
is ever spliced into shell code. Names that deployer creates beside a file
are random per run (`Context.run_id`) and made with `mkdir`, which fails on
an existing name and never writes through a link, so a file or link planted
at a name we use can only make the step fail.
"""

from deployer.quoting import Command, forced_command

STOP_GRACE = 5.0  # after SIGTERM, how long a command has to end before SIGKILL

# Everything the install needs beside the file lives in one directory of its
# own, `work` (random per run, made with mkdir, which never follows a link
# and fails on any existing name): the new content before it is renamed into
# place, and the previous file as a hard link, the same inode, so a rollback
# restores its content, mode and owner exactly. Nothing of the previous file
# is read into memory: a link to /dev/zero or a FIFO is refused before
# anything reads it.
_INSTALL = r"""set -eu
path=$1 mark=$2 mode=$3 owner=$4 work=$5 size=$6 from=${7-}
dir=${path%/*}
if [ -n "$from" ] && { [ -L "$from" ] || [ ! -f "$from" ] || [ "$(head -n 1 -- "$from")" != "$mark" ]; }; then
    echo "$from is not a file deployer wrote for this instance; deployer will not install it" >&2
    exit 1
fi
mkdir -p -- "$dir"
umask 077
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
    mkdir -- "$work"
    ln -T -- "$path" "$work/previous"
else
    mkdir -- "$work"
    : > "$work/none"
fi
if [ -n "$from" ]; then
    cat -- "$from" > "$work/new"
else
    cat > "$work/new"
fi
# Cut short (the runner died mid-send), it is not installed.
if [ -z "$from" ] && [ "$(wc -c < "$work/new")" -ne "$size" ]; then
    echo "the new content of $path arrived incomplete" >&2
    exit 1
fi
chmod "$mode" "$work/new"
if [ -n "$owner" ]; then chown -- "$owner" "$work/new"; fi
mv -fT -- "$work/new" "$path"
"""

# Safe in every state an install can stop in, including never started.
_RESTORE = r"""path=$1 work=$2
[ -d "$work" ] && [ ! -L "$work" ] || exit 0
if [ -f "$work/previous" ]; then
    if [ ! "$work/previous" -ef "$path" ]; then mv -fT -- "$work/previous" "$path"; fi
elif [ -e "$work/none" ]; then
    rm -f -- "$path"
fi
rm -rf -- "$work"
"""

# rename(2) over the old link is atomic: a reader sees the old target or the
# new one, never a missing path. The new link is made inside `work`, a
# directory of the run's own beside it (mkdir: never through a planted
# name), which also keeps the previous target for the undo: no second round
# trip to read it first. `mv -T` will not put the link into a directory
# planted at `path`, and a real file or directory there is refused.
_RELINK = r"""set -eu
path=$1 target=$2 work=$3
mkdir -p -- "${path%/*}"
if [ -e "$path" ] && [ ! -L "$path" ]; then
    echo "$path exists and is not a symlink; deployer will not replace it (move it aside)" >&2
    exit 1
fi
mkdir -m 700 -- "$work"
if [ -L "$path" ]; then readlink -- "$path" > "$work/previous"; else : > "$work/none"; fi
ln -sT -- "$target" "$work/new"
mv -fT -- "$work/new" "$path"
"""

# Safe in every state a relink can stop in, including never started.
_RESTORE_LINK = r"""path=$1 work=$2
[ -d "$work" ] && [ ! -L "$work" ] || exit 0
if [ -f "$work/previous" ]; then
    ln -sfT -- "$(cat -- "$work/previous")" "$work/back" && mv -fT -- "$work/back" "$path"
elif [ -e "$work/none" ]; then
    rm -f -- "$path"
fi
rm -rf -- "$work"
"""

# Name-based virtual hosts: Apache answers a Host header from the first
# site whose ServerName or ServerAlias matches it (wildcards included), so a
# second site with the same name takes another's traffic, or loses its own.
# Names go to awk through the environment: `awk -v` would expand backslashes.
# A name that is not a plain host name pattern can match no host we serve;
# an awk that fails counts as a conflict, never as "free".
_NAMES_ARE_FREE = r"""dir=$1 own=$2
shift 2
[ -d "$dir" ] || exit 0
taken=
for f in "$dir"/*.conf; do
    [ -f "$f" ] || continue
    [ "${f##*/}" = "$own" ] && continue
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
"""


# The artifact arrives on stdin, in the session that makes the release: no
# tarball is stored on the host, and the bytes tar read are the bytes whose
# sha256 is checked. It unpacks into a directory of the run's own (random
# name, mode 0700, made with mkdir) and is renamed to the release only when
# whole and verified; the release carries the run's id, so an undo removes
# only a release this run made. DEPLOY_PATH is checked first: the switch at
# the end would refuse a real directory there, but only after migrate.
#
# Only what changed travels. Every release holds `.deployer-sums`, a line
# "<sha256> <mode> <path>" per file, sorted by path. When the runner knows
# the live release's list (by its sha256, `base`), it sends the lines that
# no longer hold (`drop`), the new ones (`add`) and a tarball of only the
# files of `add`; every other file of the new release is a hard link to the
# same file of the live release (`cp -l`: no copy, no read). Releases are
# never written to (media and uploads live outside them), so sharing their
# files is safe; a file changed in place since it was unpacked (its mtime is
# no longer the artifact's 0) is never linked: `live_state` reports it and
# it is sent. The new list must hash to `want`, so a host that would make a
# release other than the runner's fails instead.
#
# stdin: "<tarball sha256> <base or -> <want> <how>\n", then the size of
# `drop` (gzipped) on a line and `drop`, the same for `add`, then the
# gzipped tarball. `how` says where all that after the first line comes
# from (see _FETCH): `sent` on stdin; `keep` on stdin too, and a copy of it
# is kept in `relay/copy` for the other hosts, which the key on the line
# after the lists ("<sha256 of the copy> <public key>") may then read
# through `offer` (options for authorized_keys) until its expiry; `fetched`
# from `relay/copy`, which the fetch made (nothing follows the first line
# on stdin).
_UNPACK = r"""set -eu
releases=$1 release=$2 tmp=$3 run=$4 live=$5 relay=$6 offer=$7 tag=$8 seconds=$9
IFS=' ' read -r expect base want how
if [ -e "$live" ] && [ ! -L "$live" ]; then
    echo "$live exists and is not a symlink; deployer will not replace it (move it aside)" >&2
    exit 1
fi
mkdir -p -- "$releases"
if [ -e "$release" ] || [ -L "$release" ]; then
    echo "$release already exists; deployer will not touch another deploy's release" >&2
    exit 1
fi
mkdir -m 700 -- "$tmp"
mkdir -m 755 -- "$tmp/tree"
case $how in
keep) mkdir -m 700 -- "$relay"; : > "$relay/copy" ;;
fetched) exec < "$relay/copy" ;;
esac
for part in drop add; do
    IFS= read -r size
    if [ "$how" = keep ]; then
        printf '%s\n' "$size" >> "$relay/copy"
        head -c "$size" | tee -a -- "$relay/copy" | gzip -dc > "$tmp/$part"
    else
        head -c "$size" | gzip -dc > "$tmp/$part"
    fi
done
[ "$how" != keep ] || IFS=' ' read -r copysum key
mkfifo -m 600 -- "$tmp/stream"
# From inside the tree: tar would unquote a backslash in a -C argument.
(cd -- "$tmp/tree" && exec tar -xzf ../stream --no-same-owner) &
unpacking=$!
if [ "$how" = keep ]; then
    got=$(tee -a -- "$tmp/stream" "$relay/copy" | sha256sum)
else
    got=$(tee -- "$tmp/stream" | sha256sum)
fi
if ! wait "$unpacking"; then
    echo "unpacking the artifact failed (full disk? see tar's message above)" >&2
    exit 1
fi
if [ "${got%% *}" != "$expect" ]; then
    echo "the artifact arrived damaged: sha256 ${got%% *}, expected $expect" >&2
    exit 1
fi
: > "$tmp/keep"
if [ "$base" != - ]; then
    from=$(readlink -- "$live")
    have=$(sha256sum < "$from/.deployer-sums")
    if [ "${have%% *}" != "$base" ]; then
        echo "the live release $from changed during the deploy; deploy again" >&2
        exit 1
    fi
    # By file name, not NR == FNR: an empty `drop` has no records of its own.
    awk 'FILENAME == ARGV[1] { drop[$0] = 1; next } !($0 in drop)' "$tmp/drop" "$from/.deployer-sums" \
        > "$tmp/keep"
    (cd "$from" && cut -d ' ' -f 3- "$tmp/keep" | xargs -r -d '\n' cp -l --parents -t "$tmp/tree" --)
fi
LC_ALL=C sort -t ' ' -k 3 -- "$tmp/keep" "$tmp/add" > "$tmp/tree/.deployer-sums"
got=$(sha256sum < "$tmp/tree/.deployer-sums")
if [ "${got%% *}" != "$want" ]; then
    echo "the new release's file list is not the runner's (sha256 ${got%% *}, expected $want)" >&2
    exit 1
fi
printf '%s\n' "$run" > "$tmp/tree/.deployer-release-id"
mv -T -- "$tmp/tree" "$release"
if [ "$how" = fetched ]; then came="read from the first host"; else came=sent; fi
echo "$(wc -l < "$tmp/keep") files linked from the live release, $(wc -l < "$tmp/add") $came"
rm -rf -- "$tmp"
case $how in
fetched) rm -rf -- "$relay" ;;
keep) offer "$relay" "$offer $key $tag" "$seconds" "$copysum" ;;
esac
"""

# The artifact offered to the other hosts (see _FETCH): a line for the
# one-time key in the login user's authorized_keys, which lets it run
# `cat` of the copy and nothing else, and expires by itself should the
# runner die before `_CLOSE` removes it. Never fails the deploy: the other
# hosts are then sent the artifact through the tunnel. authorized_keys is
# appended to (same file, owner, mode and labels), never through a link,
# under a lock on ~/.ssh that `_CLOSE` takes too.
_OFFER = r"""offer() {
    relay=$1 line=$2 seconds=$3 sum=$4 keys=$HOME/.ssh/authorized_keys
    not="the artifact is not offered to the other hosts:"
    if [ -n "${SSH_ORIGINAL_COMMAND+set}" ]; then
        # It would run instead of the key's command: the key would be a login.
        echo "$not this login runs under an sshd ForceCommand"
        return 0
    fi
    if [ -L "$keys" ] || [ ! -f "$keys" ] || [ "$(stat -c %h -- "$keys")" != 1 ]; then
        echo "$not $keys is not a regular file with one name"
        return 0
    fi
    have=$(sha256sum < "$relay/copy")
    if [ "${have%% *}" != "$sum" ]; then
        echo "$not its copy could not be kept whole (full disk?)"
        rm -rf -- "$relay"
        return 0
    fi
    # Local time, as sshd reads it (before OpenSSH 9.1, which added a UTC
    # form); under daylight saving time sshd reads it an hour later.
    until=$(env -u TZ date -d "+$seconds seconds" +%Y%m%d%H%M%S) || return 0
    if (flock -w 10 9 || exit 1
        # A last line without its newline would swallow ours.
        [ ! -s "$keys" ] || [ "$(tail -c 1 -- "$keys" | wc -l)" = 1 ] || echo >> "$keys"
        printf '%s\n' "${line%%,*},expiry-time=\"$until\",${line#*,}" >> "$keys") 9< "$HOME/.ssh"; then
        echo "the artifact is offered to the other hosts until $until"
    else
        echo "$not cannot add the key to $keys"
    fi
}
"""

# What the runner needs to send only what changed: the sha256 of the live
# release's file list, the files in it changed in place (never linked), and,
# from one host, the list itself (gzip, then base64: the output is text).
_LIVE_STATE = r"""live=$1 full=$2
from=$(readlink -- "$live") || exit 0
echo "live ${from##*/}"
[ -f "$from/.deployer-sums" ] || exit 0
have=$(sha256sum < "$from/.deployer-sums") || exit 0
echo "base ${have%% *}"
(cd "$from" && cut -d ' ' -f 3- .deployer-sums | xargs -r -d '\n' stat -c '%Y %n' --) \
    | awk '$1 != 0 { sub(/^[^ ]* /, ""); print "drift " $0 }'
if [ "$full" = 1 ]; then
    printf 'sums '
    gzip -c < "$from/.deployer-sums" | base64 -w 0
    echo
fi
"""

# The tunnel crossed once: a host that would be sent the same artifact as
# the first host reads it from there instead, over SSH inside the private
# network. stdin: the sha256 and size of the copy (the lists and the
# tarball, as _UNPACK reads them; or `-`: nothing to fetch), the user to
# log in as, the first host's known_hosts line (its key as the runner's
# known_hosts has it, under the alias `deployer-relay`) and the one-time
# private key, which lives here only while ssh runs, in a directory of the
# run's own (mode 0700). No ssh config, agent or other key is used. Never
# fails the deploy: the reason it did not fetch is printed, and the runner
# then sends the artifact itself.
_FETCH = r"""relay=$1 address=$2 port=$3 limit=$4
IFS=' ' read -r want size || exit 0
[ "$want" != - ] || exit 0
IFS= read -r user && IFS= read -r known || exit 0
if ! command -v ssh > /dev/null; then
    echo "not fetched: no ssh client on this host"
    exit 0
fi
if ! mkdir -p -- "${relay%/*}" || ! mkdir -m 700 -- "$relay" || ! cd -- "$relay"; then
    echo "not fetched: cannot make $relay"
    exit 0
fi
umask 077
cat > key
printf '%s\n' "$known" > known
# Names relative to the run's directory: ssh would expand % and ${...} in
# a path, and split it at quotes. Never more than the copy's size is kept.
timeout -k 5 "$limit" ssh -F /dev/null -T -n -i ./key -l "$user" -p "$port" \
    -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile=./known -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=deployer-relay \
    -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o ControlPath=none \
    -o LogLevel=ERROR -- "$address" copy 2> error | head -c "$size" > copy
rm -f key known
got=$(sha256sum < copy)
if [ "${got%% *}" = "$want" ]; then
    echo fetched
    exit 0
fi
echo "not fetched: $(head -c 300 error | tr '\n' ' ')(read $(wc -c < copy) of $size bytes)"
cd / && rm -rf -- "$relay"
"""

# The offer withdrawn: the copy removed, and the key's line removed from
# authorized_keys through a new file renamed over it (readers see the old
# file or the new one, never a part), under the lock `offer` takes. The
# line is the one whose last field is the tag, compared as a string (from
# the environment: `awk -v` would expand backslashes), never as a pattern.
_CLOSE = r"""relay=$1 tag=$2 keys=$HOME/.ssh/authorized_keys
rm -rf -- "$relay"
[ -f "$keys" ] && [ ! -L "$keys" ] || exit 0
export DEPLOYER_TAG="$tag"
awk '$NF == ENVIRON["DEPLOYER_TAG"] { found = 1; exit } END { exit !found }' "$keys" || exit 0
(flock -w 10 9 || exit 1
 was=$(stat -c '%i %s %y' -- "$keys")
 new=$(mktemp -- "$keys.XXXXXX") || exit 1
 # Not over a change another tool made meanwhile (it takes no lock of ours).
 awk '$NF != ENVIRON["DEPLOYER_TAG"]' "$keys" > "$new" && chmod --reference="$keys" -- "$new" \
     && [ "$(stat -c '%i %s %y' -- "$keys")" = "$was" ] \
     && mv -f -- "$new" "$keys" || { rm -f -- "$new"; exit 1; }) 9< "$HOME/.ssh" && exit 0
echo "could not remove the relay key $tag from $keys (it expires by itself)" >&2
exit 1
"""

# Safe in every state the unpack (or the fetch) can stop in: a release is
# removed only if it carries this run's id.
_DISCARD = r"""release=$1 tmp=$2 run=$3 relay=$4
rm -rf -- "$tmp" "$relay"
if [ -f "$release/.deployer-release-id" ] && [ "$(cat -- "$release/.deployer-release-id")" = "$run" ]; then
    rm -rf -- "$release"
fi
# The first release of an instance leaves no empty directory behind.
rmdir -- "${release%/*}" 2> /dev/null || true
"""

# One deploy (or rollback) of an instance at a time: the lock is a
# directory, made with mkdir, which exactly one caller can make; it holds
# who took it (`owner`: the run's id on the first line, then a line for
# people). On the first host it waits up to `wait` seconds for a holder to
# finish; the other hosts are locked only once the first one is ("go" on
# stdin), so two runs can never each hold a part and wait for the other.
# A holder releases the other hosts before the first, so there they wait
# a little longer than on the first, whatever `wait` is.
_LOCK = r"""state=$1 run=$2 owner=$3 wait=$4 gated=$5 hint=$6 from=${7-}
if [ "$gated" = 1 ]; then
    IFS= read -r go || go=
    if [ "$go" != go ]; then
        echo "not locked here: the lock on the first host was not taken" >&2
        exit 1
    fi
fi
mkdir -p -- "${state%/*}"
mkdir -m 755 -- "$state" 2> /dev/null || true
if [ -L "$state" ] || [ ! -d "$state" ]; then
    echo "$state exists and is not a directory; deployer will not use it (move it aside)" >&2
    exit 1
fi
lock=$state/lock
start=$(date +%s)
# Taken over from run `from` (gone; see `deployer unlock`) if it still
# holds it (`-`: a lock with no owner, left by a run that died taking it):
# of two runs taking it over at once, only one makes `taken`.
if [ -n "$from" ] && [ -d "$lock" ] && [ ! -L "$lock" ]; then
    held=$(head -n 1 -- "$lock/owner" 2> /dev/null) || held=-
    if [ "$held" = "$from" ] && mkdir -- "$lock/taken-$from" 2> /dev/null; then
        if printf '%s\n%s\n' "$run" "$owner" > "$lock/taken-$from/owner" \
                && mv -f -- "$lock/taken-$from/owner" "$lock/owner"
        then exit 0; fi
        echo "cannot write $lock/owner" >&2
        exit 1
    fi
fi
until mkdir -m 700 -- "$lock" 2> /dev/null; do
    if [ ! -e "$state" ] && [ ! -L "$state" ]; then
        # Destroyed while this run waited: it is made anew, as by a first deploy.
        mkdir -p -- "${state%/*}" && mkdir -m 755 -- "$state" 2> /dev/null
        [ ! -d "$state" ] || [ -L "$state" ] || continue
    elif [ ! -e "$lock" ] && [ ! -L "$lock" ] && [ -d "$state" ] && [ ! -L "$state" ]; then
        continue  # released between the two looks
    fi
    if [ -L "$lock" ] || [ ! -d "$lock" ]; then
        echo "$lock exists and is not a lock deployer made; deployer will not use it (move it aside)" >&2
        exit 1
    fi
    now=$(date +%s)
    if [ $((now - start)) -ge "$wait" ]; then
        since=$(stat -c %Y -- "$lock" 2> /dev/null || echo "$now")
        held=$(sed -n 2p -- "$lock/owner" 2> /dev/null) || held=
        echo "locked by ${held:-a run that is taking or releasing the lock}, $((now - since)) s ago; $hint" >&2
        exit 1
    fi
    sleep 1
done
# Stopped (the run interrupted) between taking the lock and naming itself in
# it, it would leave a lock nobody can name: the stop signal removes it.
trap 'rm -rf -- "$lock"; exit 143' TERM INT HUP
if ! { printf '%s\n%s\n' "$run" "$owner" > "$lock/owner.new" && mv -f -- "$lock/owner.new" "$lock/owner"; }
then
    rm -rf -- "$lock"  # ours, a moment old: a lock nobody can name would hold the instance for good
    echo "cannot write $lock/owner (full disk?)" >&2
    exit 1
fi
trap - TERM INT HUP
"""

# Whatever the run's outcome: a line in the instance's history, then the
# lock released, if this run holds it (never another's). A history line is
# one write of less than PIPE_BUF bytes in append mode: whole, never mixed
# with another's.
_FINISH = r"""state=$1 run=$2 line=$3
shift 3
[ -d "$state" ] && [ ! -L "$state" ] || exit 0
if [ "$(head -n 1 -- "$state/lock/owner" 2> /dev/null)" != "$run" ]; then exit 0; fi
# Destroyed: the state goes too, but only once every path named after the
# line is gone (the purge before it may have failed, on a file it could not
# remove): else `list` and `destroy` could no longer find what is left, and
# a new instance of that name would take over the old one's shared files.
if [ "$#" -gt 0 ]; then
    left=
    for p in "$@"; do if [ -e "$p" ] || [ -L "$p" ]; then left=1; fi; done
    if [ -z "$left" ]; then rm -rf -- "$state"; exit; fi
fi
[ -z "$line" ] || printf '%s\n' "$line" >> "$state/history"
rm -rf -- "$state/lock"
"""

# After a successful deploy: the newest `keep` releases stay, and the live
# one and the one before it, whatever their age: the one before it by name,
# and the one that was live before it, as the history says (after a
# rollback, that is not the one before it by name). Releases are named by
# their time (UTC), so sorting by name is by age; names of runs still being
# made (a dot first) are never matched.
_PRUNE = r"""releases=$1 live=$2 keep=$3 history=$4
cd -- "$releases" 2> /dev/null || exit 0
current=$(readlink -- "$live" 2> /dev/null) || current=
current=${current##*/}
before=
for r in $(ls -1 | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$' | sort); do
    [ "$r" = "$current" ] && break
    before=$r
done
was=$(awk -F '\t' -v now="$current" '$3 == "done" && $4 != now && $4 ~ /^[0-9]+T[0-9]+Z-[0-9a-f]+$/ { p = $4 }
    END { print p }' "$history" 2> /dev/null) || was=
ls -1 | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$' | sort -r | tail -n +"$((keep + 1))" |
while IFS= read -r r; do
    [ "$r" = "$current" ] || [ "$r" = "$before" ] || [ "$r" = "$was" ] || rm -rf -- "$r"
done
"""

# What an instance's host holds, for `deployer releases`, `history` and
# `rollback` (see instance.py): its live release, every release (whether
# whole, whether it keeps its vhost), who holds its lock and since when,
# and the end of its history. Reads only.
_STATE = r"""live=$1 releases=$2 state=$3 lines=$4 record=$5 shared=${6-}
now=$(readlink -- "$live" 2> /dev/null) && echo "live ${now##*/}"
if [ -n "$shared" ] && { [ -e "$shared" ] || [ -L "$shared" ]; }; then echo shared; fi
if [ -d "$releases" ]; then
    ls -1 -- "$releases" | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$' | sort | while IFS= read -r r; do
        whole=0 vhost=0
        [ -f "$releases/$r/.deployer-sums" ] && [ ! -L "$releases/$r" ] && whole=1
        [ -f "$releases/$r/$record" ] && vhost=1
        echo "release $r $whole $vhost"
    done
fi
if [ -d "$state/lock" ]; then
    since=$(stat -c %Y -- "$state/lock")
    run=$(head -n 1 -- "$state/lock/owner" 2> /dev/null | tr -d ' ' | head -c 64)
    echo "lock $(($(date +%s) - since)) $run $(sed -n 2p -- "$state/lock/owner" 2> /dev/null | head -c 512)"
fi
if [ -f "$state/history" ]; then tail -n "$lines" -- "$state/history" | sed 's/^/history /'; fi
exit 0
"""

# Every instance deployer made under a deploy root, one line each,
# tab-separated: name, live release ("-"), releases kept, its vhost
# (enabled, available or -), the lock's age in seconds (-), the live link's
# age in seconds (-); then, for each, the last line of its history that
# made a release live. Names that are not config names are not deployer's.
_INSTANCES = r"""root=$1 apache=$2 mark=$3
cd -- "$root" 2> /dev/null || exit 0
now=$(date +%s)
for d in *.releases *.deployer; do
    [ -d "$d" ] && [ ! -L "$d" ] && printf '%s\n' "${d%.*}"
done | grep -E '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' | sort -u | while IFS= read -r n; do
    live=$(readlink -- "$n" 2> /dev/null) && live=${live##*/} || live=-
    count=$(ls -1 -- "$n.releases" 2> /dev/null | grep -cE '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$')
    vhost=-
    if [ -f "$apache/sites-available/$n.conf" ] && [ ! -L "$apache/sites-available/$n.conf" ] &&
            [ "$(head -n 1 -- "$apache/sites-available/$n.conf" 2> /dev/null)" = "$(printf "$mark" "$n")" ]; then
        vhost=available
        [ -L "$apache/sites-enabled/$n.conf" ] && vhost=enabled
    fi
    # Either may go while this reads (a run ends): then it is not there.
    lock=- since=-
    if t=$(stat -c %Y -- "$n.deployer/lock" 2> /dev/null); then lock=$((now - t)); fi
    if [ -L "$n" ] && t=$(stat -c %Y -- "$n" 2> /dev/null); then since=$((now - t)); fi
    printf 'instance\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$live" "$count" "$vhost" "$lock" "$since"
    awk -F '\t' '$3 == "done" && $4 ~ /^[0-9]+T[0-9]+Z-[0-9a-f]+$/ { last = $0 }
        END { if (last != "") print last }' "$n.deployer/history" 2> /dev/null | sed "s/^/last\t$n\t/"
done
exit 0
"""

# Destroy, before Apache reloads: the instance's site disabled, then its
# vhost removed, each kept in `work` for the undo in the layout relink and
# install keep (restore_link and restore put them back). Only a link, and
# only a vhost whose first line is deployer's mark, are removed.
_UNLINK = r"""set -eu
path=$1 work=$2
if [ -L "$path" ]; then
    mkdir -m 700 -- "$work"
    readlink -- "$path" > "$work/previous"
    rm -f -- "$path"
elif [ -e "$path" ]; then
    echo "$path is not a symbolic link; deployer will not remove it" >&2
    exit 1
fi
"""

_REMOVE_FILE = r"""set -eu
path=$1 mark=$2 work=$3
if [ -L "$path" ] || { [ -e "$path" ] && { [ ! -f "$path" ] || [ "$(head -n 1 -- "$path")" != "$mark" ]; }; }; then
    echo "$path was not written by deployer; deployer will not remove it" >&2
    exit 1
fi
if [ -e "$path" ]; then
    mkdir -m 700 -- "$work"
    ln -T -- "$path" "$work/previous"
    rm -f -- "$path"
fi
"""

# Destroy, once Apache no longer serves the instance: its releases, live
# path, what it kept for an undo, and (unless kept) its shared files. The
# live path is removed only as the link deployer made.
_PURGE = r"""live=$1 releases=$2 shared=$3
if [ -L "$live" ]; then rm -f -- "$live"
elif [ -e "$live" ]; then echo "$live is not a symbolic link; deployer left it" >&2; fi
for p in "$releases" "$shared"; do
    [ -n "$p" ] || continue
    if [ -L "$p" ]; then rm -f -- "$p"; elif [ -d "$p" ]; then rm -rf -- "$p"; fi
done
rm -rf -- "$live".deployer-*
"""

# Before a rollback changes anything: the release is whole and keeps its
# vhost, and the live release is one the runner saw when it chose.
_CAN_ACTIVATE = r"""live=$1 release=$2 record=$3
shift 3
now=$(readlink -- "$live" 2> /dev/null) || now=
seen=0
for was in "$@"; do [ "${now##*/}" = "$was" ] && seen=1; done
if [ "$seen" = 0 ]; then
    echo "the live release changed (now ${now:-none}) since it was read; run the rollback again" >&2
    exit 1
fi
if [ -L "$release" ] || [ ! -f "$release/.deployer-sums" ] || [ ! -f "$release/$record" ]; then
    echo "$release is not a whole release with the vhost it was deployed with" >&2
    exit 1
fi
"""

# What a run that is gone (killed) left beside the releases: its release,
# if not live (and not `keep`), its part-made tree and the artifact's copy
# it offered.
_DISCARD_RUN = r"""releases=$1 live=$2 run=$3 keep=$4
cd -- "$releases" 2> /dev/null || exit 0
current=$(readlink -- "$live" 2> /dev/null) || current=
for r in *; do
    [ "$keep" = 0 ] || break
    [ -d "$r" ] && [ ! -L "$r" ] && [ -f "$r/.deployer-release-id" ] || continue
    [ "$(cat -- "$r/.deployer-release-id")" = "$run" ] || continue
    if [ "${current##*/}" = "$r" ]; then echo "release $r of that run is live: kept"; continue; fi
    rm -rf -- "$r" && echo "removed its release $r"
done
for d in .*.deployer-"$run" .deployer-relay-"$run"; do
    [ -e "$d" ] || continue
    rm -rf -- "$d" && echo "removed $d"
done
"""

# Before anything changes: every shared file a release needs is there
# (deployer never writes one: it holds what only the hosts may know).
_SHARED_FILES = r"""shared=$1
shift
missing=
for f in "$@"; do
    [ -f "$shared/$f" ] || missing="$missing $shared/$f"
done
if [ -n "$missing" ]; then
    echo "missing shared file(s):$missing; put them there (deployer never writes them), or remove them from" \
         "shared/files in targets.yaml" >&2
    exit 1
fi
"""

# Each shared path of the new release made a link to the instance's shared
# directory: what the release holds there (from the package) goes, what is
# in the shared directory is never touched; a directory missing there is
# made (group-writable and setgid when `group` is set: the app writes
# there). The release is this run's own, but its directories came from the
# package: one that is a link could lead the removal out of the release,
# so none on the way may be one.
_LINK_SHARED = r"""set -eu
release=$1 shared=$2 group=$3
shift 3
for entry in "$@"; do
    kind=${entry%%:*} rel=${entry#*:}
    at=$release
    rest=$rel
    while [ "${rest#*/}" != "$rest" ]; do
        at=$at/${rest%%/*} rest=${rest#*/}
        if [ -L "$at" ] || { [ -e "$at" ] && [ ! -d "$at" ]; }; then
            echo "${at#"$release"/} in the release is not a directory; cannot link $rel there" >&2
            exit 1
        fi
    done
    if [ "$kind" = d ] && [ ! -d "$shared/$rel" ]; then
        mkdir -p -- "$shared/$rel"
        if [ -n "$group" ]; then
            chgrp -- "$group" "$shared/$rel"
            chmod 2775 "$shared/$rel"
        fi
    fi
    mkdir -p -- "${release}/$(dirname -- "$rel")"
    rm -rf -- "${release:?}/$rel"
    ln -s -- "$shared/$rel" "$release/$rel"
done
echo "linked $# shared path(s) from $shared"
"""

# TERM the group, KILL it if it outlives the grace, then wait until no
# process of it is left: a migrate that ignores TERM must not go on working
# after the deploy said it was stopped.
# (dash's kill takes no `--`; a negative pid after the signal is a group.)
_STOP_FUNCTION = r"""stop_group() {
    pid=$1 grace=$2
    kill -TERM "-$pid" 2>/dev/null || return 0
    for signal in KILL ''; do
        i=0
        while kill -0 "-$pid" 2>/dev/null; do
            i=$((i + 1))
            if [ "$i" -gt "$((grace * 10))" ]; then
                [ -n "$signal" ] && kill -"$signal" "-$pid" 2>/dev/null
                break
            fi
            sleep 0.1
        done
    done
}
"""
_STOP_GROUP = _STOP_FUNCTION + 'stop_group "$1" "$2"\n'


# A run that is gone (its runner was killed) may have left a command
# running on the host: its SSH session closed, but nothing stops a migrate
# that writes nothing. Every session of a run carries the run's id as its
# first argument (see _SESSION): each one's process group is stopped as
# _STOP_GROUP does. Only this user's processes are visible to /proc here.
_STOP_RUN = _STOP_FUNCTION + r"""run=$1 grace=$2
groups=
for d in /proc/[0-9]*; do
    # Arguments one a line (a newline inside one, as in the script, a space).
    [ "$(tr '\0\n' '\n ' 2> /dev/null < "$d/cmdline" | sed -n '4,5p' | tr '\n' ' ')" = "deployer-session $run " ] \
        || continue
    group=$(sed 's/.*) //' "$d/stat" 2> /dev/null | cut -d ' ' -f 3) || continue
    [ -n "$group" ] && [ "$group" != "$(sed 's/.*) //' /proc/self/stat | cut -d ' ' -f 3)" ] || continue
    groups="$groups $group"
done
[ -n "$groups" ] || exit 0
for g in $groups; do stop_group "$g" "$grace" & done
wait
echo "stopped what run $run still ran (process groups$groups)"
"""

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
_SESSION = r"""IFS= read -r token || exit 1
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
"""


def _program(name: str, text: str, *args: str) -> Command:
    return Command.of(("sh", "-c", text, name, *args))


def install(path: str, mark: str, mode: int, owner: str, work: str, size: int, source: str = "") -> Command:
    """Write stdin (`size` bytes), or the host's file `source`, to `path`
    through a file in `work` renamed over it, refusing a path deployer did
    not write (its first line is not `mark`)."""
    return _program("deployer-install", _INSTALL, path, mark, f"{mode:o}", owner, work, str(size),
                    *([source] if source else []))


def restore(path: str, work: str) -> Command:
    """Undo `install`: the previous file back, or no file if there was none."""
    return _program("deployer-restore", _RESTORE, path, work)


def forget(work: str) -> Command:
    """Once a change is kept, what its undo would have needed goes."""
    return Command.of(("rm", "-rf", "--", work))


def unpack(releases: str, release: str, tmp: str, run_id: str, live: str, relay: str, tag: str,
           seconds: int) -> Command:
    """Make `release` from stdin (see _UNPACK), the files that did not change
    linked from the live release, if `live` can be switched to it later.
    Asked to, it keeps a copy of the artifact in `relay` and lets a key
    tagged `tag` read it for `seconds`."""
    offer = forced_command(Command.of(("cat", "--", f"{relay}/copy")).line())
    return _program("deployer-unpack", _OFFER + _UNPACK, releases, release, tmp, run_id, live,
                    relay, offer, tag, str(seconds))


def fetch(relay: str, address: str, port: int, seconds: int) -> Command:
    """Read the artifact from the host at `address` into `relay`, in at most
    `seconds` (see _FETCH)."""
    return _program("deployer-fetch", _FETCH, relay, address, str(port), str(seconds))


def close(relay: str, tag: str) -> Command:
    """Withdraw what `unpack` offered: its copy, and the key tagged `tag`."""
    return _program("deployer-close-relay", _CLOSE, relay, tag)


def live_state(live: str, full: bool) -> Command:
    """What the release `live` points to holds, for sending only what changed."""
    return _program("deployer-live-state", _LIVE_STATE, live, "01"[full])


def discard(release: str, tmp: str, run_id: str, relay: str) -> Command:
    """Undo `unpack` (and `fetch`)."""
    return _program("deployer-discard", _DISCARD, release, tmp, run_id, relay)


def stop_group(pid: int, grace: float) -> Command:
    return _program("deployer-stop", _STOP_GROUP, str(pid), str(int(grace)))


def relink(path: str, target: str, work: str) -> Command:
    """Point the symlink `path` at `target`, keeping what `restore_link` needs in `work`."""
    return _program("deployer-relink", _RELINK, path, target, work)


def restore_link(path: str, work: str) -> Command:
    """Undo `relink`: the previous target back, or no link if there was none."""
    return _program("deployer-restore-link", _RESTORE_LINK, path, work)


def names_are_free(sites_enabled: str, own: str, names: tuple[str, ...]) -> Command:
    """Fails if another enabled site serves one of `names` (lowercase host names or patterns)."""
    return _program("deployer-check-names", _NAMES_ARE_FREE, sites_enabled, own, *names)


def session(run_id: str, entries: tuple[tuple[str, bool], ...]) -> Command:
    """Run each (command line, reads stdin) in turn in one shell, marking the
    end of each; see _SESSION for what stdin must hold. The run's id is its
    first argument, so that stop_run can find it."""
    return _program("deployer-session", _SESSION, run_id,
                    *(w for line, reads in entries for w in (line, "01"[reads])))


def stop_run(run_id: str, grace: float) -> Command:
    """Stop every session of run `run_id` still running on the host (see _STOP_RUN)."""
    return _program("deployer-stop-run", _STOP_RUN, run_id, str(int(grace)))


def lock(state: str, run_id: str, owner: str, wait: int, gated: bool, hint: str, takes_over: str = "") -> Command:
    """Take the instance's lock in `state` for `run_id`, waiting up to `wait`
    seconds, or take it over from run `takes_over`; `gated`: first read
    "go" on stdin (see _LOCK). `hint` ends the message that says who holds it."""
    return _program("deployer-lock", _LOCK, state, run_id, owner, str(wait), "01"[gated], hint,
                    *([takes_over] if takes_over else []))


def discard_run(releases: str, live: str, run_id: str, keep: bool = False) -> Command:
    """Remove what run `run_id` left beside the releases (see _DISCARD_RUN);
    with `keep`, its whole releases stay."""
    return _program("deployer-discard-run", _DISCARD_RUN, releases, live, run_id, "01"[keep])


def finish(state: str, run_id: str, line: str, forget: tuple[str, ...] = ()) -> Command:
    """Append `line` to the history and release the lock, if `run_id` holds
    it; if every path of `forget` is gone, remove the instance's whole state
    instead."""
    return _program("deployer-finish", _FINISH, state, run_id, line, *forget)


def prune(releases: str, live: str, keep: int, history: str) -> Command:
    """Remove all but the newest `keep` releases, never the live one or the one before it."""
    return _program("deployer-prune", _PRUNE, releases, live, str(keep), history)


def state(live: str, releases: str, state_dir: str, lines: int, record: str, shared: str) -> Command:
    """Print what the instance's host holds (see _STATE)."""
    return _program("deployer-state", _STATE, live, releases, state_dir, str(lines), record, shared)


def instances(root: str, apache_dir: str, mark: str) -> Command:
    """Every instance under `root` (see _INSTANCES); `mark` is the vhost's
    first line with %s for the name."""
    return _program("deployer-instances", _INSTANCES, root, apache_dir, mark)


def unlink(path: str, work: str) -> Command:
    """Remove the symlink `path`, if there is one, kept in `work` for restore_link."""
    return _program("deployer-unlink", _UNLINK, path, work)


def remove_file(path: str, mark: str, work: str) -> Command:
    """Remove the file deployer wrote at `path`, if there is one, kept in `work` for restore."""
    return _program("deployer-remove-file", _REMOVE_FILE, path, mark, work)


def purge(live: str, releases: str, shared: str) -> Command:
    """Remove an instance's code, and `shared` unless it is ""."""
    return _program("deployer-purge", _PURGE, live, releases, shared)


def can_activate(live: str, release: str, record: str, seen: tuple[str, ...]) -> Command:
    """Fail unless `release` is whole with its vhost and `live` points at one of `seen` ("" for none)."""
    return _program("deployer-can-activate", _CAN_ACTIVATE, live, release, record, *seen)


def shared_files(shared: str, files: tuple[str, ...]) -> Command:
    """Fail, naming them, if any of `files` is missing from `shared`."""
    return _program("deployer-shared-files", _SHARED_FILES, shared, *files)


def link_shared(release: str, shared: str, group: str, dirs: tuple[str, ...], files: tuple[str, ...]) -> Command:
    """Make each shared path of `release` a link into `shared` (see _LINK_SHARED)."""
    return _program("deployer-link-shared", _LINK_SHARED, release, shared, group,
                    *(f"d:{d}" for d in dirs), *(f"f:{f}" for f in files))
