"""The benchmarks' S3 endpoint (s3rver): a ranged GET costs the server only the bytes it sends.

This is why it exists (moto's server reads the whole object for every ranged GET, which makes any range-based
reader look slow): measured by the bytes the server process read (``/proc/<pid>/io`` ``rchar``: files and
sockets alike), not by time.
"""

from __future__ import annotations

import io
import os
import uuid

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

MiB = 1 << 20
GiB = 1 << 30


def bytes_read(pid: int) -> int:
    """Everything the process has read so far, from files and sockets (``rchar``)."""
    with open(f"/proc/{pid}/io") as counters:
        for line in counters:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def test_a_ranged_get_of_1_mib_from_1_gib_reads_about_1_mib(s3rver):
    bucket = s3rver.create_bucket(f"djfs-range-{uuid.uuid4().hex[:12]}")
    client = s3rver.client(max_pool_connections=8)
    pattern = os.urandom(MiB)
    # 1 GiB: 1024 different MiB (each the pattern rotated), uploaded in parts as a large object is
    content = b"".join(pattern[i:] + pattern[:i] for i in range(0, MiB, 1024))
    assert len(content) == GiB
    client.upload_fileobj(io.BytesIO(content), bucket, "big",
                          Config=TransferConfig(max_concurrency=4, multipart_chunksize=64 * MiB))
    assert client.head_object(Bucket=bucket, Key="big")["ContentLength"] == GiB

    offset = 700 * MiB + 12345
    before = bytes_read(s3rver.pid)
    body = client.get_object(Bucket=bucket, Key="big", Range=f"bytes={offset}-{offset + MiB - 1}")["Body"].read()
    ranged = bytes_read(s3rver.pid) - before
    assert body == content[offset:offset + MiB]
    assert MiB <= ranged < 2 * MiB, f"the server read {ranged} bytes to answer a 1 MiB range of a 1 GiB object"

    # the same counter sees a whole-object GET read the whole object: it measures what the server does
    before = bytes_read(s3rver.pid)
    response = client.get_object(Bucket=bucket, Key="big")
    total = sum(len(chunk) for chunk in iter(lambda: response["Body"].read(8 * MiB), b""))
    assert total == GiB
    assert bytes_read(s3rver.pid) - before >= GiB
    client.delete_object(Bucket=bucket, Key="big")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_it_knows_one_access_key(s3rver):
    """Requests signed with another access key are refused (s3rver checks the key id, not the V4 signature)."""
    import boto3
    stranger = boto3.session.Session().client(
        "s3", endpoint_url=s3rver.endpoint, region_name="us-east-1", aws_access_key_id="not-a-key",
        aws_secret_access_key="whatever")
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        stranger.list_buckets()
    assert s3rver.client().list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_restart_keeps_objects_in_its_directory(s3rver):
    bucket = s3rver.create_bucket(f"djfs-restart-{uuid.uuid4().hex[:12]}")
    store = s3rver.store(bucket, "prefix")
    store.put("ab/cd/key", b"kept")
    s3rver.restart()
    assert store.get("ab/cd/key") == b"kept"
    assert [info.key for info in store.list()] == ["ab/cd/key"]


def test_a_store_through_a_relay_reaches_it(s3rver):
    """The way tests play a remote S3: the store talks to the relay, whose counters see its requests."""
    from djfs.testing.relay import Relay
    bucket = s3rver.create_bucket(f"djfs-relay-{uuid.uuid4().hex[:12]}")
    s3rver.store(bucket).put("ab/cd/key", b"0123456789")
    with Relay(s3rver.port, delay=0.01, connection_rate=90 * MiB) as relay:
        remote = s3rver.store(bucket, endpoint=relay.endpoint)
        assert remote.get_range("ab/cd/key", 2, 3) == b"234"
        assert relay.requests == 1 and relay.delivered > 3
