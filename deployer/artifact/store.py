"""The artifact in an S3 bucket (or an S3-compatible store) of the private
network: the runner puts it there once, and each host reads it with a
presigned URL that lives a few minutes, checking its sha256 (see
remote/sh/fetch-url.sh). The tunnel then carries it once, and no host
serves the others.

botocore does the talking (the `s3` extra: `pip install 'deployer[s3]'`),
imported only when a store is used: it brings the whole AWS credential
chain (environment, profiles, SSO, web identity, an instance's role),
which is where credentials belong; never targets.yaml.

Objects are named by the sha256 of their bytes, so a put whose object is
there already (same size, and the same checksum where the store keeps one)
sends nothing; the store checks the bytes it receives against that sha256
(x-amz-checksum-sha256), so a name never holds other bytes.

Every call has a connect and a read timeout and a bounded number of tries.
A failure is one `StoreError` whose message names the store, the bucket,
the operation and what the store answered (its error code and HTTP status),
never a key, a signature or a URL's query.
"""

import base64
import re
from typing import BinaryIO
from urllib.parse import urlsplit

from deployer.errors import StoreError

_SHA256 = re.compile(r"[0-9a-f]{64}")
# What SigV4 allows a presigned URL to live.
MAX_PRESIGN = 7 * 24 * 3600

# Error codes worth a sentence of their own: the usual ways a store says no.
_EXPLAINED = {
    "InvalidAccessKeyId": "the access key is not known to the store",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "AccessDenied": "these credentials may not do this",
    "NoSuchBucket": "there is no such bucket",
    "BadDigest": "the bytes the store received do not have the sha256 they were sent with",
    "RequestTimeTooSkewed": "this machine's clock is too far from the store's",
}


def _botocore():
    try:
        import botocore.config
        import botocore.exceptions
        import botocore.session
    except ImportError:
        raise StoreError("an S3 artifact store needs botocore: pip install 'deployer[s3]'") from None
    return botocore


class S3Store:
    """One bucket of one S3 (or S3-compatible) store, objects named `prefix` + sha256 hex.

    `endpoint` is the store's URL (None: AWS's own for `region`); `profile`
    names a profile of the AWS config files (None: the chain's default,
    AWS_PROFILE included). Each call waits at most `connect_timeout` to
    connect and `read_timeout` for each read, and is tried at most
    `attempts` times."""

    def __init__(self, endpoint: str | None, bucket: str, prefix: str = "", region: str | None = None, *,
                 profile: str | None = None, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 attempts: int = 3):
        self.bucket, self.prefix = bucket, prefix
        try:
            split = urlsplit(endpoint) if endpoint else None
            # What messages name: scheme, host and port (a URL's user part or query stays out).
            self.where = f"{split.scheme}://{split.hostname}{f':{split.port}' if split.port else ''}" if split \
                else f"AWS S3 ({region or 'default region'})"
        except ValueError as e:
            raise StoreError(f"{endpoint!r} is not the URL of a store: {e}") from None
        bc = _botocore()
        self._errors = bc.exceptions
        config = bc.config.Config(
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={"max_attempts": attempts, "mode": "standard"},
            signature_version="s3v4",
            # An S3-compatible store is reached by path (no DNS name per
            # bucket). The body is not hashed for the signature: its sha256
            # goes as the object's checksum, which the store checks.
            s3={"addressing_style": "path" if endpoint else "auto", "payload_signing_enabled": False},
            # botocore's default CRC32 trailers (since 1.36) are not
            # understood by every S3-compatible store; ours is sha256.
            request_checksum_calculation="when_required", response_checksum_validation="when_required")
        try:
            session = bc.session.Session(profile=profile)
            self._client = session.create_client("s3", endpoint_url=endpoint, region_name=region, config=config)
        except (bc.exceptions.BotoCoreError, ValueError) as e:  # ValueError: an endpoint botocore refuses
            raise StoreError(f"{self.where}: {_reason(e)}") from None

    def key(self, sha256: str) -> str:
        """The object's name for the bytes whose sha256 (hex) is `sha256`."""
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256 in hex: {sha256!r}")
        return self.prefix + sha256

    def has(self, sha256: str, size: int) -> bool:
        """Whether the object for `sha256` is there with `size` bytes (and, where the store says, that sha256)."""
        key = self.key(sha256)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except self._errors.ClientError as e:
            # 404: not there. 403: not there either when the credentials may
            # not list the bucket (S3 will not say); the put then tells.
            if _status(e) in (403, 404):
                return False
            raise self._error("look for", key, e) from None
        except self._errors.BotoCoreError as e:
            raise self._error("look for", key, e) from None
        checksum = head.get("ChecksumSHA256")
        return head.get("ContentLength") == size and checksum in (None, _b64(sha256))

    def put(self, reader: BinaryIO, size: int, sha256: str) -> bool:
        """Store the `size` bytes `reader` gives, whose sha256 (hex) is
        `sha256`, unless they are there already. `reader` must seek (a retry
        reads it again from where it was). True if they were sent."""
        if not (callable(getattr(reader, "seek", None)) and callable(getattr(reader, "tell", None))):
            raise TypeError("S3Store.put needs a reader with seek() and tell()")
        if self.has(sha256, size):
            return False
        key = self.key(sha256)
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=reader, ContentLength=size,
                                    ChecksumSHA256=_b64(sha256), ContentType="application/octet-stream")
        except (self._errors.ClientError, self._errors.BotoCoreError) as e:
            raise self._error("put", key, e) from None
        return True

    def presign(self, sha256: str, seconds: int) -> str:
        """A URL that lets whoever holds it GET the object for `sha256` during
        `seconds`: a bearer secret for that long (never on argv, never printed)."""
        if not 1 <= seconds <= MAX_PRESIGN:
            raise ValueError(f"a presigned URL lives 1 to {MAX_PRESIGN} seconds, not {seconds}")
        key = self.key(sha256)
        try:
            return self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                       ExpiresIn=seconds)
        except (self._errors.ClientError, self._errors.BotoCoreError) as e:
            raise self._error("presign", key, e) from None

    def _error(self, doing: str, key: str, e: Exception) -> StoreError:
        return StoreError(f"S3 store {self.where}, bucket {self.bucket}: cannot {doing} {key}: {_reason(e)}")


def _b64(sha256: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256)).decode()


def _status(e) -> int | None:
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _reason(e: Exception) -> str:
    """What went wrong, from the parts of `e` that hold no secret: a
    ClientError's code and HTTP status (its message is the store's, and a
    store may echo the signature in it), or the kind of a BotoCoreError."""
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        code = code if re.fullmatch(r"[A-Za-z0-9.]{1,64}", code) else "?"
        said = _EXPLAINED.get(code)
        return f"{said} ({code}, HTTP {_status(e)})" if said else f"the store answered {code} (HTTP {_status(e)})"
    import botocore.exceptions as bx
    if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return ("no AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "~/.aws/credentials, or an instance role)")
    if isinstance(e, bx.ProfileNotFound):
        return "no such AWS profile"
    if isinstance(e, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return "the store did not answer in time"
    if isinstance(e, bx.EndpointConnectionError):
        return "cannot connect to the store"
    if isinstance(e, bx.ConnectionClosedError):
        return "the store closed the connection"
    if isinstance(e, bx.NoRegionError):
        return "no region (set the store's region, or AWS_REGION)"
    return f"{type(e).__name__}"
