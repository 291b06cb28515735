"""save_folder on an object store: a real run saves to s3:// (moto's S3 server on loopback), a second identical
run resumes from the bucket (its newest checkpoint corrupted there: verified after download and skipped), and
the export reads from the bucket."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers import load_script, moto_s3, run_train

from cosmos_composer.checkpoint.object_store import ObjectStoreError, StoreFolder, check_reachable, stored_checkpoints
from cosmos_composer.config import ConfigError, check_output_folders, load_config

BUCKET = "ckpts"
SECRET = "s3cr3t-never-printed"  # the secret key of the test user: it may appear in no output
QUICKSTART = Path(__file__).resolve().parents[1] / "yamls" / "quickstart.yaml"


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on loopback with an empty bucket; the boto3 client. Credentials via the environment."""
    import boto3

    with moto_s3(monkeypatch, secret_key=SECRET) as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield client


def _objects(client, prefix: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing}


def _run(tmp_path, demo_mds, *args):
    return run_train(
        [
            f"train_loader.dataset.local={demo_mds}",
            "eval_loader=null",
            "callbacks.sample_videos=null",
            "save_interval=2ba",
            f"save_folder=s3://{BUCKET}/run",
            *args,
        ],
        tmp_path,
    )


def test_a_run_saves_to_a_bucket_resumes_from_it_and_exports_from_it(tmp_path, demo_mds, s3, capsys):
    first = _run(tmp_path, demo_mds, "max_duration=4ba")
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"last checkpoint s3://{BUCKET}/run/ep1-ba4" in first.stdout

    # Every checkpoint in the bucket carries network.json, run.json and checksums.json, which holds its bytes' sums.
    stored = _objects(s3, "run/")
    for name in ("ep0-ba2", "ep1-ba4"):
        files = {key.split("/", 1)[1]: data for key, data in stored.items() if key.startswith(f"{name}/")}
        assert sorted(files) == [".metadata", "__0_0.distcp", "checksums.json", "network.json", "run.json"]
        listed = json.loads(files["checksums.json"])["files"]
        assert sorted(listed) == [".metadata", "__0_0.distcp", "network.json", "run.json"]
        for file, digest in listed.items():
            assert hashlib.sha256(files[file]).hexdigest() == digest["sha256"], (name, file)
        assert json.loads(files["network.json"])["preset"] == "tiny-multiview"

    # The newest checkpoint corrupted in the bucket (same size): the resume verifies its download and falls back.
    shard = bytearray(stored["ep1-ba4/__0_0.distcp"])
    shard[1024:2048] = bytes(b ^ 0xFF for b in shard[1024:2048])
    s3.put_object(Bucket=BUCKET, Key="run/ep1-ba4/__0_0.distcp", Body=bytes(shard))

    second = _run(tmp_path, demo_mds, "max_duration=5ba")
    output = second.stdout + second.stderr
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ep1-ba4 is not intact (" in second.stdout and "__0_0.distcp does not match the sha256" in second.stdout
    assert "autoresume: " in second.stdout and "resuming from ep0-ba2 (batch 2, checksums verified)" in second.stdout
    assert "[batch=3/5]" in output and "[batch=1/5]" not in output
    assert "ep2-ba5/checksums.json" in _objects(s3, "run/")
    run_folder = tmp_path / "out" / "cosmos_composer" / "quickstart" / "quickstart"
    assert not (run_folder / "checkpoint_download").exists()  # the resume's download is gone once loaded
    assert not any(Path(tmp_path).glob("s3:*"))  # nothing local is named after the URI (the lock included)
    assert SECRET not in output

    # Export from the bucket: the newest intact checkpoint, downloaded, verified, exported; the same tensors as an
    # export of a plain boto3 download of it.
    script = load_script("export_checkpoint")
    assert script.main([f"s3://{BUCKET}/run", str(tmp_path / "exported"), "--verify", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "exported" / "checksums.json").read_text())
    assert manifest["source"] == f"s3://{BUCKET}/run/ep2-ba5"
    plain = tmp_path / "plain" / "ep2-ba5"
    plain.mkdir(parents=True)
    for file, data in _objects(s3, "run/ep2-ba5/").items():
        (plain / file).write_bytes(data)
    assert script.main([str(plain), str(tmp_path / "exported_plain"), "--quiet"]) == 0
    ours = torch.load(tmp_path / "exported" / "model.pt", weights_only=True)
    reference = torch.load(tmp_path / "exported_plain" / "model.pt", weights_only=True)
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert not list(tmp_path.glob(".exported.download-*"))

    # A corrupt checkpoint named in the bucket: refused, naming it and why.
    s3.put_object(Bucket=BUCKET, Key="run/ep2-ba5/network.json", Body=b'{"preset": "tiny-singleview"}')
    capsys.readouterr()
    assert script.main([f"s3://{BUCKET}/run/ep2-ba5", str(tmp_path / "exported_bad"), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert f"s3://{BUCKET}/run/ep2-ba5 is not intact (s3://{BUCKET}/run/ep2-ba5/network.json has 29 bytes" in error
    assert not (tmp_path / "exported_bad").exists()


def test_a_bucket_that_cannot_be_listed_stops_the_run_before_the_model_is_built(tmp_path, demo_mds, s3):
    result = run_train(
        # autoresume=false: nothing but the up-front check lists the bucket before the model is built
        [f"train_loader.dataset.local={demo_mds}", "save_folder=s3://no-such-bucket/run", "autoresume=false"],
        tmp_path,
    )
    assert result.returncode != 0
    assert "save_folder: s3://no-such-bucket/run cannot be listed (" in result.stderr
    assert "NoSuchBucket" in result.stderr and "AWS_ACCESS_KEY_ID" in result.stderr
    assert "parameters:" not in result.stdout  # stopped before the network was built
    assert SECRET not in result.stdout + result.stderr


def test_checkpoints_are_grouped_from_the_bucket_listing(s3):
    for key in (
        "run/ep0-ba2/.metadata",
        "run/ep0-ba2/__0_0.distcp",
        "run/ep0-ba2/checksums.json",
        "run/ep1-ba10-rank0.pt",
        "run/ep1-ba10-rank0.pt.checksums.json",
        "run/ep1-ba10-rank0.pt.network.json",
        "run/ep1-ba10-rank0.pt.run.json",
        "run/ep1-ba12/__0_0.distcp",  # an unfinished upload: no .metadata yet
        "run/latest-rank0.pt.symlink",
        "other/ep9-ba99/.metadata",
    ):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    found = stored_checkpoints(StoreFolder.of(f"s3://{BUCKET}/run"))
    assert [(c.name, c.batch) for c in found] == [("ep1-ba12", 12), ("ep1-ba10-rank0.pt", 10), ("ep0-ba2", 2)]
    assert found[1].files == [
        "ep1-ba10-rank0.pt",
        "ep1-ba10-rank0.pt.checksums.json",
        "ep1-ba10-rank0.pt.network.json",
        "ep1-ba10-rank0.pt.run.json",
    ]
    assert [c.why_not_complete() for c in found] == ["no .metadata", None, None]


def test_an_object_store_save_folder_must_keep_every_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("COSMOS_OUTPUT_ROOT", str(tmp_path))
    cfg = load_config(QUICKSTART, ["save_folder=s3://bucket/run", "save_num_checkpoints_to_keep=2"])
    with pytest.raises(ConfigError, match="save_num_checkpoints_to_keep=2 with save_folder='s3://bucket/run'"):
        check_output_folders(cfg)


def test_a_bucket_with_checkpoints_and_autoresume_off_is_refused_up_front(s3):
    s3.put_object(Bucket=BUCKET, Key="run/ep0-ba2/.metadata", Body=b"x")
    check_reachable(f"s3://{BUCKET}/run", may_hold_checkpoints=True)
    check_reachable(f"s3://{BUCKET}/other", may_hold_checkpoints=False)
    with pytest.raises(ObjectStoreError, match=r"s3://ckpts/run holds checkpoints \(ep0-ba2\) and autoresume=false"):
        check_reachable(f"s3://{BUCKET}/run", may_hold_checkpoints=False)
