#!/bin/sh
# The artifact from an object store of the private network (S3, or one
# that speaks it; see artifact/store.py), for a host that would be sent the
# same artifact: the runner put it there once, and this host reads it with
# a presigned URL. Args: the relay directory and a time limit in seconds.
# stdin: the sha256 and size of the copy (the lists and the tarball, as
# unpack.sh reads them in `fetched` mode; or `-`: nothing to fetch), then
# the URL on a line of its own. Whoever holds the URL may read the object
# until it expires, so it is never on a command line (ps shows those) nor
# in what this prints: python3 (the app's, always there) reads it from
# stdin. At most `size` bytes are kept, in `$relay/copy`, in a directory
# made here (mode 0700; one already there is not ours, and fails). Never
# fails the deploy: it prints `fetched`, or `not fetched: <reason>` (the
# directory then removed) and the runner sends the artifact itself.
relay=$1 limit=$2
IFS=' ' read -r want size || exit 0
[ "$want" != - ] || exit 0
. ./lib/fetch-start.sh
fetch_start "$relay" python3 python3
# python3 ends by itself a second before the limit, saying why; `timeout`
# is there for a read that hangs past it. Its stderr is not shown: a
# traceback may quote the URL. A try that fails within 5 s with no byte
# read (connection refused or reset, HTTP 503: a store that many hosts
# reach at once) is tried again, up to 3 times, a little later each time,
# all within the limit; one that timed out or was refused access is not.
# Redirects are not followed and no proxy is used: the store is in the
# private network, and the URL goes nowhere else.
reason=$(timeout -k 2 "$limit" python3 -I -c '
import hashlib, http.client, os, random, re, socket, sys, time, urllib.error, urllib.request

want, size, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + max(1.0, limit - 1)
url = sys.stdin.buffer.readline().decode("ascii", "replace").strip()


def stop(why):
    print(re.sub("[^ -~]", " ", why)[:200])
    sys.exit(1)


if not re.fullmatch("[0-9a-f]{64}", want) or size < 1:
    stop("bad input (sha256 and size)")
if not url.startswith(("http://", "https://")):
    stop("no http(s) URL on stdin")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
out = os.fdopen(os.open("copy", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")
got = hashlib.sha256()
n = 0


def fetch():
    global n
    with opener.open(url, timeout=max(0.5, deadline - time.monotonic())) as r:
        length = r.headers.get("Content-Length", "")
        if length.isdigit() and int(length) != size:
            stop("the store holds %s bytes, not %d" % (length, size))
        while n < size:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = r.read(min(1 << 16, size - n))
            if not chunk:
                break
            out.write(chunk)
            got.update(chunk)
            n += len(chunk)


tries = 0
while True:
    tries += 1
    began = time.monotonic()
    again = False
    try:
        fetch()
        break
    except urllib.error.HTTPError as e:
        try:
            body = e.read(4096) or b""
        except Exception:
            body = b""
        code = re.search(b"<Code>([A-Za-z]{1,64})</Code>", body)
        why = "HTTP %d%s" % (e.code, " (%s)" % code.group(1).decode() if code else "")
        again = e.code == 503
    except (TimeoutError, socket.timeout):
        why = "timed out after %g s" % limit
    except http.client.IncompleteRead:
        why = "short read"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        cause = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(cause, (TimeoutError, socket.timeout)):
            why = "timed out after %g s" % limit
        elif isinstance(cause, OSError) and cause.strerror:
            why = "failed: %s" % cause.strerror
        else:
            why = "failed: %s" % type(cause).__name__
        again = isinstance(cause, (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError,
                                   http.client.RemoteDisconnected))
    ended = time.monotonic()
    if not again or n or tries >= 3 or ended - began >= 5 or ended + tries + 2 >= deadline:
        stop("%s (read %d of %d bytes; %d %s)" % (why, n, size, tries, "try" if tries == 1 else "tries"))
    time.sleep(tries + random.random())
out.close()
if n < size:
    stop("short read: %d of %d bytes" % (n, size))
if got.hexdigest() != want:
    stop("sha256 mismatch: %d bytes whose sha256 is %s..., not %s..." % (n, got.hexdigest()[:12], want[:12]))
' "$want" "$size" "$limit" 2> /dev/null)
status=$?
if [ "$status" = 0 ]; then
    echo fetched
    exit 0
fi
case $status in
    124 | 137) reason="timed out after $limit s" ;;
esac
echo "not fetched: $(printf '%s' "${reason:-python3 failed (exit $status)}" | LC_ALL=C tr -c '[:print:]' ' ' | head -c 300)"
cd / && rm -rf -- "$relay"
