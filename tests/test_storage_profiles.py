"""AWS profiles reach pyarrow's S3 filesystem (``glidre_core.extraction.storage``).

moto's server accepts any credentials by default, so a test that merely "works" with a profile
proves nothing. Here moto checks every request: ``/moto-api/reset-auth`` with ``0`` makes it
verify the SigV4 signature against the access keys of its IAM backend and the IAM policy of
their user. Only one IAM user's key is valid; it lives in one profile of a temporary shared
credentials file, the ``[default]`` profile holds a wrong secret, and no ``AWS_ACCESS_KEY_ID``
is in the environment. The negative controls (default profile, no credentials, anonymous, keys
in the environment) fail against the same server, so the positive case can only pass if the
profile's key signed the requests.
"""

from __future__ import annotations

import json
import pickle

import boto3
import pytest
import requests

import pyarrow.fs as pafs

from glidre_core.extraction.config import StorageConfig
from glidre_core.extraction.errors import InputError
from glidre_core.extraction.storage import Storage, build_s3_filesystem, list_files, read_bytes, write_bytes

BUCKET = "glidre-profile-test"
PROFILE = "glidre-reader"
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
           "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
           "AWS_ENDPOINT_URL_S3", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


@pytest.fixture(scope="module")
def authed_s3(tmp_path_factory):
    """A moto server enforcing SigV4 + IAM, one IAM user with S3 rights, its key, a bucket."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # own sessions, not boto3's cached default one (its config would outlive the env changes)
    session = boto3.session.Session(aws_access_key_id="setup", aws_secret_access_key="setup",
                                    region_name="us-east-1")
    iam = session.client("iam", endpoint_url=endpoint)
    iam.create_user(UserName="glidre-profile-user")
    iam.put_user_policy(UserName="glidre-profile-user", PolicyName="s3-all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="glidre-profile-user")["AccessKey"]
    s3 = session.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="docs/part-0.jsonl", Body=b'{"id": "d1"}\n')
    # from here on moto authenticates every request (the setting is process-wide: undo it)
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0").raise_for_status()
    try:
        yield {"endpoint": endpoint, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"],
               "dir": tmp_path_factory.mktemp("aws")}
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf")
        server.stop()


@pytest.fixture
def aws_home(authed_s3, monkeypatch):
    """No AWS variables at all, a credentials file whose only valid key is the profile's, and a
    config file giving the profile a region; returns a setter for the environment."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
    d = authed_s3["dir"]
    (d / "credentials").write_text(
        "[default]\n"
        f"aws_access_key_id = {authed_s3['key_id']}\naws_secret_access_key = not-the-secret\n"
        f"[{PROFILE}]\n"
        f"aws_access_key_id = {authed_s3['key_id']}\naws_secret_access_key = {authed_s3['secret']}\n"
    )
    (d / "config").write_text(f"[default]\nregion = us-east-1\n[profile {PROFILE}]\nregion = eu-west-3\n")
    (d / "empty").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(d / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(d / "config"))
    return monkeypatch


def _storage(authed_s3, **cfg) -> Storage:
    return Storage(StorageConfig(endpoint_url=authed_s3["endpoint"], **cfg))


def test_profile_credentials_read_and_write_through_storage(authed_s3, aws_home):
    aws_home.setenv("AWS_PROFILE", PROFILE)
    storage = _storage(authed_s3)
    loc = storage.location(f"s3://{BUCKET}/docs/")
    assert storage.s3.region == "eu-west-3"  # the profile's region, from AWS_CONFIG_FILE
    assert [i.path for i in list_files(loc)] == [f"{BUCKET}/docs/part-0.jsonl"]
    assert read_bytes(loc.fs, loc.join("part-0.jsonl")) == b'{"id": "d1"}\n'
    write_bytes(loc.fs, loc.join("out", "written.txt"), b"by the profile")
    # checked with the IAM key itself: the object is really there
    s3 = boto3.session.Session(aws_access_key_id=authed_s3["key_id"], aws_secret_access_key=authed_s3["secret"],
                               region_name="us-east-1").client("s3", endpoint_url=authed_s3["endpoint"])
    assert s3.get_object(Bucket=BUCKET, Key="docs/out/written.txt")["Body"].read() == b"by the profile"
    # chain credentials are not pickled into Ray tasks: a worker resolves the chain itself
    blob = pickle.dumps(storage.s3)
    assert authed_s3["secret"].encode() not in blob and authed_s3["key_id"].encode() not in blob
    assert read_bytes(pickle.loads(blob), loc.join("part-0.jsonl")) == b'{"id": "d1"}\n'


def test_profile_with_credential_process(authed_s3, aws_home):
    """``credential_process`` (aws-vault, granted, SSO helpers) works through the same chain."""
    d = authed_s3["dir"]
    helper = d / "print-credentials.sh"
    payload = json.dumps({"Version": 1, "AccessKeyId": authed_s3["key_id"], "SecretAccessKey": authed_s3["secret"]})
    helper.write_text(f"#!/bin/sh\necho '{payload}'\n")
    helper.chmod(0o755)
    (d / "config-process").write_text(f"[profile helper]\ncredential_process = {helper}\n")
    aws_home.setenv("AWS_CONFIG_FILE", str(d / "config-process"))
    aws_home.setenv("AWS_SHARED_CREDENTIALS_FILE", str(d / "empty"))
    aws_home.setenv("AWS_PROFILE", "helper")
    loc = _storage(authed_s3).location(f"s3://{BUCKET}/docs/part-0.jsonl")
    assert [i.path for i in list_files(loc)] == [f"{BUCKET}/docs/part-0.jsonl"]


@pytest.mark.parametrize("case", ["default profile", "no credentials", "anonymous", "env keys win"])
def test_without_the_profile_the_same_server_refuses(authed_s3, aws_home, case):
    """Negative controls: the server really rejects every other identity (a wrong signature is
    ACCESS_DENIED; moto answers an unsigned request with an HTTP 500, also a refusal)."""
    cfg = {}
    if case == "no credentials":
        aws_home.setenv("AWS_SHARED_CREDENTIALS_FILE", str(authed_s3["dir"] / "empty"))
        aws_home.setenv("AWS_CONFIG_FILE", str(authed_s3["dir"] / "empty"))
    elif case == "anonymous":
        aws_home.setenv("AWS_PROFILE", PROFILE)
        cfg = {"anonymous": True}
    elif case == "env keys win":  # AWS order: environment keys before any profile
        aws_home.setenv("AWS_PROFILE", PROFILE)
        aws_home.setenv("AWS_ACCESS_KEY_ID", authed_s3["key_id"])
        aws_home.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    loc = _storage(authed_s3, **cfg).location(f"s3://{BUCKET}/docs/")
    with pytest.raises((InputError, OSError)) as info:
        list_files(loc)
    signed = case in ("default profile", "env keys win")
    assert "ACCESS_DENIED" in str(info.value) or (not signed and "HTTP status 500" in str(info.value))
    if signed:
        assert "requester-pays" in str(info.value)  # the hint of check_bucket
    with pytest.raises(OSError):
        read_bytes(loc.fs, loc.join("part-0.jsonl"))


def test_region_precedence(aws_home):
    """Config, then AWS_REGION / AWS_DEFAULT_REGION, then the profile's region, then us-east-1."""
    aws_home.setenv("AWS_PROFILE", PROFILE)
    assert build_s3_filesystem(StorageConfig()).region == "eu-west-3"
    assert build_s3_filesystem(StorageConfig(region="ap-south-1")).region == "ap-south-1"
    aws_home.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert build_s3_filesystem(StorageConfig()).region == "us-west-2"
    aws_home.delenv("AWS_DEFAULT_REGION")
    aws_home.setenv("AWS_PROFILE", "no-such-profile")
    assert build_s3_filesystem(StorageConfig()).region == "us-east-1"
    assert isinstance(build_s3_filesystem(StorageConfig()), pafs.S3FileSystem)
