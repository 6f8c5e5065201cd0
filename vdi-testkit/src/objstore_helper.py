# The object-storage helper of vdi-testkit (src/objstore.rs runs it with the venv's python as
# `python -c <this file> <op> <args...>`). It talks to the test servers on 127.0.0.1 only:
# S3 (moto, s3s-fs) through boto3, Azurite through azure-storage-blob. The server is named by
# environment variables: OBJ_KIND (s3 or azure), OBJ_ENDPOINT, OBJ_KEY, OBJ_SECRET, OBJ_REGION
# (S3), OBJ_ACCOUNT (Azure). Results are lines on stdout; data to put comes on stdin. Every
# client has short timeouts and no retries, so a fault shows at once.
import base64
import hashlib
import os
import sys
import zlib

KIND = os.environ["OBJ_KIND"]
ENDPOINT = os.environ["OBJ_ENDPOINT"]


def s3():
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=os.environ["OBJ_KEY"],
        aws_secret_access_key=os.environ["OBJ_SECRET"],
        region_name=os.environ.get("OBJ_REGION", "us-east-1"),
        config=Config(
            connect_timeout=10,
            read_timeout=30,
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def azure():
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient(
        account_url=ENDPOINT,
        credential={"account_name": os.environ["OBJ_ACCOUNT"], "account_key": os.environ["OBJ_KEY"]},
        retry_total=0,
        connection_timeout=10,
        read_timeout=30,
    )


def code_of(e):
    """The error code of a failed call, with its HTTP status: `412 PreconditionFailed`."""
    r = getattr(e, "response", None)
    if isinstance(r, dict):
        return "%s %s" % (r.get("ResponseMetadata", {}).get("HTTPStatusCode"), r.get("Error", {}).get("Code"))
    status = getattr(e, "status_code", None)
    code = getattr(e, "error_code", None)
    return "%s %s" % (status, code)


def main():
    op, args = sys.argv[1], sys.argv[2:]
    if KIND == "s3":
        s3_op(op, args)
    else:
        azure_op(op, args)


def s3_op(op, args):
    c = s3()
    if op == "create":
        c.create_bucket(Bucket=args[0])
    elif op == "list":
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1]):
            for o in page.get("Contents", []):
                print("%s\t%d" % (o["Key"], o["Size"]))
    elif op == "put":
        c.put_object(Bucket=args[0], Key=args[1], Body=sys.stdin.buffer.read())
    elif op == "get":
        sys.stdout.buffer.write(c.get_object(Bucket=args[0], Key=args[1])["Body"].read())
    elif op == "delete":
        c.delete_object(Bucket=args[0], Key=args[1])
    elif op == "uploads":
        for u in c.list_multipart_uploads(Bucket=args[0]).get("Uploads", []):
            print("%s\t%s" % (u["Key"], u["UploadId"]))
    elif op == "start-upload":
        print(c.create_multipart_upload(Bucket=args[0], Key=args[1])["UploadId"])
    elif op == "probe":
        s3_probe(c, args[0])
    elif op == "iam-setup":
        iam_setup()
    else:
        raise SystemExit("unknown op " + op)


def iam_setup():
    """moto only, while it does not check credentials yet: a user allowed everything, and its
    access key (printed as `key<TAB>secret`)."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=ENDPOINT,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
        region_name="us-east-1",
    )
    iam.create_user(UserName="vdi-test")
    iam.put_user_policy(
        UserName="vdi-test",
        PolicyName="all",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
    )
    k = iam.create_access_key(UserName="vdi-test")["AccessKey"]
    print("%s\t%s" % (k["AccessKeyId"], k["SecretAccessKey"]))


def attempt(name, f):
    """Runs one probe: `name<TAB>yes|no<TAB>detail`."""
    try:
        ok, detail = f()
    except Exception as e:  # noqa: BLE001 - a probe reports whatever went wrong
        ok, detail = False, "error: %s %s" % (code_of(e), str(e).splitlines()[0][:160])
    print("%s\t%s\t%s" % (name, "yes" if ok else "no", detail))


def refused(f, want="412"):
    try:
        f()
    except Exception as e:  # noqa: BLE001
        code = code_of(e)
        return code.startswith(want), "refused: " + code
    return False, "accepted"


def s3_probe(c, b):
    def if_none_match():
        c.put_object(Bucket=b, Key="p/inm", Body=b"one", IfNoneMatch="*")
        return refused(lambda: c.put_object(Bucket=b, Key="p/inm", Body=b"two", IfNoneMatch="*"))

    def if_match():
        e1 = c.put_object(Bucket=b, Key="p/im", Body=b"one")["ETag"]
        c.put_object(Bucket=b, Key="p/im", Body=b"two", IfMatch=e1)
        ok, detail = refused(lambda: c.put_object(Bucket=b, Key="p/im", Body=b"three", IfMatch=e1))
        body = c.get_object(Bucket=b, Key="p/im")["Body"].read()
        return ok and body == b"two", detail + "; current etag accepted; body %r" % body

    def multipart():
        part = 5 * 1024 * 1024
        up = c.create_multipart_upload(Bucket=b, Key="p/mp")["UploadId"]
        parts = []
        for n, fill in ((1, b"a"), (2, b"b")):
            r = c.upload_part(Bucket=b, Key="p/mp", UploadId=up, PartNumber=n, Body=fill * part)
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
        r = c.upload_part(Bucket=b, Key="p/mp", UploadId=up, PartNumber=3, Body=b"c" * 100)
        parts.append({"PartNumber": 3, "ETag": r["ETag"]})
        c.complete_multipart_upload(Bucket=b, Key="p/mp", UploadId=up, MultipartUpload={"Parts": parts})
        size = c.head_object(Bucket=b, Key="p/mp")["ContentLength"]
        return size == 2 * part + 100, "2 x 5 MiB + 100 B, completed size %d" % size

    def ranged():
        c.put_object(Bucket=b, Key="p/range", Body=b"0123456789")
        r = c.get_object(Bucket=b, Key="p/range", Range="bytes=2-5")
        body = r["Body"].read()
        status = r["ResponseMetadata"]["HTTPStatusCode"]
        return body == b"2345" and status == 206, "status %d body %r" % (status, body)

    def checksum(algo, good, bad):
        data = b"checksummed data"
        kw = {"Checksum" + algo: good(data)}
        c.put_object(Bucket=b, Key="p/ck", Body=data, **kw)
        kw = {"Checksum" + algo: bad}
        ok, detail = refused(lambda: c.put_object(Bucket=b, Key="p/ck", Body=data, **kw), want="4")
        return ok, "right one accepted; wrong one " + detail

    sha = lambda d: base64.b64encode(hashlib.sha256(d).digest()).decode()  # noqa: E731
    crc = lambda d: base64.b64encode(zlib.crc32(d).to_bytes(4, "big")).decode()  # noqa: E731
    attempt("put If-None-Match: * (second create refused 412)", if_none_match)
    attempt("put If-Match: <etag> (stale etag refused 412)", if_match)
    attempt("multipart upload, 5 MiB parts, completed", multipart)
    attempt("ranged GET bytes=2-5", ranged)
    attempt("x-amz-checksum-sha256 validated", lambda: checksum("SHA256", sha, sha(b"other")))
    attempt("x-amz-checksum-crc32 validated", lambda: checksum("CRC32", crc, crc(b"other")))


def azure_op(op, args):
    svc = azure()
    if op == "create":
        svc.create_container(args[0])
    elif op == "list":
        for blob in svc.get_container_client(args[0]).list_blobs(name_starts_with=args[1] or None):
            print("%s\t%d" % (blob.name, blob.size))
    elif op == "put":
        svc.get_blob_client(args[0], args[1]).upload_blob(sys.stdin.buffer.read(), overwrite=True)
    elif op == "get":
        sys.stdout.buffer.write(svc.get_blob_client(args[0], args[1]).download_blob().readall())
    elif op == "delete":
        svc.get_blob_client(args[0], args[1]).delete_blob()
    elif op == "probe":
        azure_probe(svc, args[0])
    else:
        raise SystemExit("unknown op " + op)


def azure_probe(svc, container):
    from azure.core import MatchConditions

    cc = svc.get_container_client(container)

    def if_none_match():
        blob = cc.get_blob_client("p/inm")
        blob.upload_blob(b"one", overwrite=True, match_condition=MatchConditions.IfMissing)
        return refused(
            lambda: blob.upload_blob(b"two", overwrite=True, match_condition=MatchConditions.IfMissing),
            want="4",
        )

    def if_match():
        blob = cc.get_blob_client("p/im")
        e1 = blob.upload_blob(b"one", overwrite=True)["etag"]
        blob.upload_blob(b"two", overwrite=True, etag=e1, match_condition=MatchConditions.IfNotModified)
        ok, detail = refused(
            lambda: blob.upload_blob(b"three", overwrite=True, etag=e1, match_condition=MatchConditions.IfNotModified)
        )
        body = blob.download_blob().readall()
        return ok and body == b"two", detail + "; current etag accepted; body %r" % body

    def blocks():
        blob = cc.get_blob_client("p/blocks")
        ids = []
        for n, fill in enumerate((b"a", b"b")):
            bid = base64.b64encode(b"block-%06d" % n).decode()
            blob.stage_block(bid, fill * (5 * 1024 * 1024))
            ids.append(bid)
        uncommitted = len(blob.get_block_list("uncommitted")[1])
        blob.commit_block_list(ids)
        size = blob.get_blob_properties().size
        return size == 10 * 1024 * 1024, "2 blocks of 5 MiB, %d uncommitted before, size %d" % (uncommitted, size)

    def ranged():
        blob = cc.get_blob_client("p/range")
        blob.upload_blob(b"0123456789", overwrite=True)
        body = blob.download_blob(offset=2, length=4).readall()
        return body == b"2345", "body %r" % body

    def block_list_conditional():
        blob = cc.get_blob_client("p/bl-inm")
        bid = base64.b64encode(b"block-000000").decode()
        blob.stage_block(bid, b"x")
        blob.commit_block_list([bid], match_condition=MatchConditions.IfMissing)
        blob.stage_block(bid, b"y")
        return refused(
            lambda: blob.commit_block_list([bid], match_condition=MatchConditions.IfMissing), want="4"
        )

    def md5():
        blob = cc.get_blob_client("p/md5")
        from azure.storage.blob import ContentSettings

        data = b"checksummed data"
        good = ContentSettings(content_md5=bytearray(hashlib.md5(data).digest()))
        blob.upload_blob(data, overwrite=True, content_settings=good)
        wrong = bytearray(hashlib.md5(b"other").digest())
        return refused(lambda: blob.upload_blob(data, overwrite=True, validate_content=False,
                                                content_settings=ContentSettings(content_md5=wrong),
                                                headers={"Content-MD5": base64.b64encode(wrong).decode()}),
                       want="400")

    attempt("Put Blob If-None-Match: * (second create refused 409 BlobAlreadyExists)", if_none_match)
    attempt("Put Blob If-Match: <etag> (stale etag refused 412)", if_match)
    attempt("Put Block x2 (5 MiB) + Put Block List", blocks)
    attempt("Put Block List If-None-Match: * (refused when the blob exists)", block_list_conditional)
    attempt("ranged GET (x-ms-range)", ranged)
    attempt("Content-MD5 on Put Blob validated", md5)


try:
    main()
except Exception as e:  # noqa: BLE001 - the caller reads the status and code
    sys.stderr.write("ERROR %s: %s\n" % (code_of(e), str(e).splitlines()[0] if str(e) else type(e).__name__))
    sys.exit(1)
