#!/bin/sh
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
# same file of the live release (`cp -l`: no copy, no read), or, for a new
# instance, of another instance's live release (lib/seeds.sh). Releases are
# never written to (media and uploads live outside them), so sharing their
# files is safe; a file changed in place since it was unpacked (its mtime is
# no longer the artifact's 0), or that another user could write
# (lib/linkable.sh), is never linked: `live_state` reports it and it is
# sent, and one that became so since fails the unpack. The new list must
# hash to `want`, so a host that would make a release other than the
# runner's fails instead.
#
# stdin: "<tarball sha256> <base or -> <want> <how>\n", then the size of
# `drop` (gzipped) on a line and `drop`, the same for `add`, then the
# gzipped tarball. `how` says where all that after the first line comes
# from (see fetch.sh): `sent` on stdin; `keep` on stdin too, and a copy of it
# is kept in `relay/copy` for the other hosts, which the key on the line
# after the lists ("<sha256 of the copy> <public key>") may then read
# through `offer` (options for authorized_keys) until its expiry; `fetched`
# from `relay/copy`, which the fetch made (nothing follows the first line
# on stdin); `stored` the same, fetch-url.sh having read it from the
# artifact store.
. ./lib/linkable.sh
. ./lib/offer.sh
. ./lib/seeds.sh
set -eu
releases=$1 release=$2 tmp=$3 run=$4 live=$5 relay=$6 offer=$7 tag=$8 seconds=$9 others=${10}
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
fetched | stored) exec < "$relay/copy" ;;
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
what="the live release"
if [ "$base" != - ]; then
    # The release live-state.sh chose, found again by its list's sha256.
    from=$({ readlink -- "$live" || { [ "$others" = 0 ] || seeds "$live"; }; } | while IFS= read -r r; do
        have=$(sha256sum < "$r/.deployer-sums" 2> /dev/null) || continue
        if [ "${have%% *}" = "$base" ]; then
            printf '%s\n' "$r"
            break
        fi
    done)
    if [ -z "$from" ]; then
        echo "the release this deploy starts from (file list $base) changed or went during the deploy" \
             "(the live release, or another instance's, switched or pruned); deploy again" >&2
        exit 1
    fi
    if [ "$from" != "$(readlink -- "$live")" ]; then
        seed=${from%.releases/*}
        what="the live release of ${seed##*/}"
    fi
    # By file name, not NR == FNR: an empty `drop` has no records of its own.
    awk 'FILENAME == ARGV[1] { drop[$0] = 1; next } !($0 in drop)' "$tmp/drop" "$from/.deployer-sums" \
        > "$tmp/keep"
    # As live-state.sh saw them, or the new release would not hold what its list says.
    moved=$(unlinkable "$from" "$tmp/keep" | wc -l)
    if [ "$moved" != 0 ]; then
        echo "$from changed since this deploy read it ($moved of its files edited in place, given" \
             "another owner or mode, or gone); deploy again" >&2
        exit 1
    fi
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
case $how in
fetched) came="read from the first host" ;;
stored) came="read from the artifact store" ;;
*) came=sent ;;
esac
echo "$(wc -l < "$tmp/keep") files linked from $what, $(wc -l < "$tmp/add") $came"
rm -rf -- "$tmp"
case $how in
fetched | stored) rm -rf -- "$relay" ;;
keep) offer "$relay" "$offer $key $tag" "$seconds" "$copysum" ;;
esac
