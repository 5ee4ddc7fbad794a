#!/bin/sh
# The tunnel crossed once: a host that would be sent the same artifact as
# the first host reads it from there instead, over SSH inside the private
# network. stdin: the sha256 and size of the copy (the lists and the
# tarball, as unpack.sh reads them; or `-`: nothing to fetch), the user to
# log in as, the first host's known_hosts line (its key as the runner's
# known_hosts has it, under the alias `deployer-relay`) and the one-time
# private key, which lives here only while ssh runs, in a directory of the
# run's own (mode 0700). No ssh config, agent or other key is used. Never
# fails the deploy: the reason it did not fetch is printed, and the runner
# then sends the artifact itself.
relay=$1 address=$2 port=$3 limit=$4
IFS=' ' read -r want size || exit 0
[ "$want" != - ] || exit 0
IFS= read -r user && IFS= read -r known || exit 0
. ./lib/fetch-start.sh
fetch_start "$relay" ssh "ssh client"
cat > key
printf '%s\n' "$known" > known
# Names relative to the run's directory: ssh would expand % and ${...} in
# a path, and split it at quotes. Never more than the copy's size is kept.
# A read that ended within 5 s with no byte (the source's sshd resetting new
# connections past MaxStartups when many hosts start at once) is tried
# again, up to 3 times, a little later each time, all within `limit`
# seconds; one that timed out or was refused a login is not.
until=$(($(date +%s) + limit))
tries=0
while :; do
    tries=$((tries + 1))
    began=$(date +%s)
    # shellcheck disable=SC2094 # the remote's word `copy` is no file here
    timeout -k 5 "$((until - began))" ssh -F /dev/null -T -n -i ./key -l "$user" -p "$port" \
        -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile=./known -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=deployer-relay \
        -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o ControlPath=none \
        -o LogLevel=ERROR -- "$address" copy 2> error | head -c "$size" > copy
    ended=$(date +%s)
    if [ -s copy ] || [ "$tries" -ge 3 ] || [ $((ended - began)) -ge 5 ] || grep -q 'Permission denied' error \
            || [ $((ended + tries + 2)) -ge "$until" ]; then
        break
    fi
    # 1.x s then 2.x s: the hosts that were refused together do not come back together.
    sleep "$tries.$(printf %02d $(($$ % 100)))"
done
rm -f key known
got=$(sha256sum < copy)
if [ "${got%% *}" = "$want" ]; then
    echo fetched
    exit 0
fi
echo "not fetched: $(head -c 300 error | tr -c '[:print:]' ' ')(read $(wc -c < copy) of $size bytes; $tries tries)"
cd / && rm -rf -- "$relay"
