"""``doctor`` reads an S3 bucket's CORS and lifecycle rules (moto's server keeps them as S3 does)
and says exactly what browser uploads lack: the origin, PUT, the Content-Type header, ETag
exposure, an AbortIncompleteMultipartUpload rule."""

from __future__ import annotations

from rindle_async import Profile, S3Storage, maintenance
from rindle_async.storage.bucket_rules import cors_problems, lifecycle_problems
from rindle_async.storage.s3 import botocore_session

ORIGIN = "https://app.example.com"
GOOD_RULE = {"AllowedOrigins": [ORIGIN], "AllowedMethods": ["PUT", "GET", "POST"],
             "AllowedHeaders": ["*"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 3000}


def test_what_cors_rules_lack_is_named():
    assert cors_problems(None) == ["the bucket has no CORS configuration: browsers cannot upload to it directly"]
    assert cors_problems([GOOD_RULE], origin=ORIGIN) == []
    assert cors_problems([GOOD_RULE], origin="https://other.example") == [
        "no CORS rule allows the origin https://other.example"]
    bare = {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}
    assert cors_problems([bare], origin=ORIGIN, methods=("PUT", "POST")) == [
        f"no CORS rule for {ORIGIN} allows PUT", f"no CORS rule for {ORIGIN} allows POST",
        f"no CORS rule for {ORIGIN} allows the Content-Type header (AllowedHeaders)",
        f"no CORS rule for {ORIGIN} exposes ETag (ExposeHeaders): browser multipart uploads fail with "
        "'Missing ETag'"]


def test_only_a_bucket_wide_enabled_abort_rule_counts():
    rule = {"ID": "abort", "Status": "Enabled", "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    assert lifecycle_problems([rule]) == []
    for bad in ([], [{**rule, "Status": "Disabled"}], [{**rule, "Filter": {"Prefix": "avatars/"}}],
                [{"ID": "x", "Status": "Enabled", "Expiration": {"Days": 30}}]):
        assert lifecycle_problems(bad) and "AbortIncompleteMultipartUpload" in lifecycle_problems(bad)[0]


async def bucket_checks(rindle, origin=None) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.ok, c.detail) for c in await maintenance.doctor(rindle.runtime, origin=origin)
            if c.name.startswith("storage s3 ")}


async def test_doctor_reads_the_buckets_rules(make_rindle, s3_endpoint, s3_bucket):
    storage = S3Storage(bucket=s3_bucket, endpoint_url=s3_endpoint, path_style=True)
    rindle = await make_rindle(relay=False, storages={"s3": storage},
                               profiles=[Profile(name="avatars", storage="s3")])
    found = await bucket_checks(rindle)
    assert found["storage s3 CORS"] == (
        False, "the bucket has no CORS configuration: browsers cannot upload to it directly")
    assert not found["storage s3 lifecycle"][0]

    async with botocore_session().create_client("s3", region_name="us-east-1", endpoint_url=s3_endpoint) as s3:
        await s3.put_bucket_cors(Bucket=s3_bucket, CORSConfiguration={"CORSRules": [
            {**GOOD_RULE, "ExposeHeaders": []}]})
        found = await bucket_checks(rindle, origin=ORIGIN)
        assert found["storage s3 CORS"] == (False, f"no CORS rule for {ORIGIN} exposes ETag (ExposeHeaders): "
                                                   "browser multipart uploads fail with 'Missing ETag'")
        await s3.put_bucket_cors(Bucket=s3_bucket, CORSConfiguration={"CORSRules": [GOOD_RULE]})
        await s3.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [
            {"ID": "abort-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]})
    found = await bucket_checks(rindle, origin=ORIGIN)
    assert found == {
        "storage s3 CORS": (True, f"browsers may upload from {ORIGIN} (PUT, Content-Type, ETag exposed)"),
        "storage s3 lifecycle": (True, "abandoned multipart uploads are aborted by a lifecycle rule")}
    assert (await bucket_checks(rindle, origin="https://evil.example"))["storage s3 CORS"] == (
        False, "no CORS rule allows the origin https://evil.example")
