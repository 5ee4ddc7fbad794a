#!/bin/sh
# The artifact offered to the other hosts (see fetch.sh): a line for the
# one-time key in the login user's authorized_keys, which lets it run
# `cat` of the copy and nothing else, and expires by itself should the
# runner die before `close-relay.sh` removes it. Never fails the deploy: the other
# hosts are then sent the artifact through the tunnel. authorized_keys is
# appended to (same file, owner, mode and labels), never through a link,
# under a lock on ~/.ssh that `close-relay.sh` takes too.
offer() {
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
