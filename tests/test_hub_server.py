"""The Hub test server, exercised only through the real clients (huggingface_hub, datasets,
transformers, timm). Nothing here reaches the internet: every client is pointed at 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from hf_transfer.testing.hub_common import OTHER_TOKEN, USER_TOKEN
from hf_transfer.testing.hub_server import HubTestServer

hf = pytest.importorskip("huggingface_hub")
import httpx2  # noqa: E402  (huggingface_hub's HTTP client)
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
)


def _folder(tmp_path, name="folder", lfs_bytes=4096):
    d = tmp_path / name
    (d / "weights").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"a": 1}))
    (d / "weights" / "model.safetensors").write_bytes(os.urandom(lfs_bytes))
    return d


def _http_status(exc: BaseException | None) -> int | None:
    """The HTTP status of the first HfHubHTTPError in an exception's cause chain."""
    while exc is not None:
        if isinstance(exc, HfHubHTTPError):
            return exc.response.status_code
        exc = exc.__cause__ or exc.__context__
    return None


def _state(server: HubTestServer, repo_id: str, repo_type: str = "model"):
    return server.head(repo_id, repo_type), server.files(repo_id, repo_type)


# ----------------------------------------------------------------------------------------------
# huggingface_hub
# ----------------------------------------------------------------------------------------------
def test_hub_api_round_trip(hub_server, tmp_path):
    api = HfApi()
    assert api.whoami()["name"] == "user"
    url = api.create_repo("demo")
    assert url == f"{hub_server.url}/user/demo"
    assert api.create_repo("demo", exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("demo")
    assert e.value.response.status_code == 409

    d = _folder(tmp_path)
    ci = api.upload_folder(folder_path=d, repo_id="user/demo", commit_message="first")
    assert len(ci.oid) == 40 and hub_server.head("user/demo") == ci.oid
    assert sorted(api.list_repo_files("user/demo")) == [".gitattributes", "config.json", "weights/model.safetensors"]

    info = api.model_info("user/demo", files_metadata=True)
    sib = {s.rfilename: s for s in info.siblings}
    assert info.sha == ci.oid
    assert sib["weights/model.safetensors"].lfs is not None and sib["config.json"].lfs is None

    path = hf_hub_download("user/demo", "weights/model.safetensors")
    assert open(path, "rb").read() == (d / "weights" / "model.safetensors").read_bytes()
    meta = hf.get_hf_file_metadata(hf.hf_hub_url("user/demo", "weights/model.safetensors"))
    assert meta.etag == sib["weights/model.safetensors"].lfs.sha256 and meta.commit_hash == ci.oid
    meta = hf.get_hf_file_metadata(hf.hf_hub_url("user/demo", "config.json"))
    assert meta.etag == sib["config.json"].blob_id  # git blob sha1 for a regular file
    snap = snapshot_download("user/demo")
    assert json.load(open(os.path.join(snap, "config.json"))) == {"a": 1}
    assert api.file_exists("user/demo", "config.json") and not api.file_exists("user/demo", "nope.txt")
    assert [f.path for f in api.list_repo_tree("user/demo", path_in_repo="weights")] == ["weights/model.safetensors"]
    with pytest.raises(hf.errors.RemoteEntryNotFoundError):
        list(api.list_repo_tree("user/demo", path_in_repo="missing"))

    # Range reads (HfFileSystem, as datasets streaming does) -> 206
    with hf.HfFileSystem().open("user/demo/weights/model.safetensors", "rb") as f:
        f.seek(100)
        assert f.read(10) == (d / "weights" / "model.safetensors").read_bytes()[100:110]

    # branches, pull requests, commits by sha, re-upload of an unchanged folder is a no-op
    api.create_branch("user/demo", branch="dev")
    pr = api.create_commit("user/demo", [CommitOperationAdd("pr.txt", b"pr")], commit_message="pr", create_pr=True)
    assert pr.pr_url.endswith("/user/demo/discussions/1") and pr.pr_revision == "refs/pr/1"
    assert api.file_exists("user/demo", "pr.txt", revision="refs/pr/1")
    assert not api.file_exists("user/demo", "pr.txt")
    assert api.file_exists("user/demo", "config.json", revision=ci.oid)
    refs = api.list_repo_refs("user/demo", include_pull_requests=True)
    assert {b.name for b in refs.branches} == {"main", "dev"} and refs.pull_requests[0].ref == "refs/pr/1"
    assert [c.title for c in api.list_repo_commits("user/demo")] == ["first", "initial commit"]
    assert api.upload_folder(folder_path=d, repo_id="user/demo").oid == ci.oid

    # multipart LFS transfer (thresholds are read per batch request)
    hub_server.multipart_threshold, hub_server.multipart_chunk_size = 1000, 700
    blob = os.urandom(2500)
    api.upload_file(path_or_fileobj=blob, path_in_repo="big.bin", repo_id="user/demo")
    assert hub_server.files("user/demo")["big.bin"] == blob
    assert any("/_lfs/part/" in r["path"] for r in hub_server.requests)


def test_private_and_gated_repos(hub_server, capfd):
    hub_server.log = True  # print the access log: it must not show any token
    api = HfApi()
    api.create_repo("secret", private=True)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="f.txt", repo_id="user/secret")
    assert api.model_info("user/secret").private

    for token, status in ((False, 401), (OTHER_TOKEN, 404)):
        with pytest.raises(RepositoryNotFoundError) as e:
            api.model_info("user/secret", token=token)
        assert e.value.response.status_code == status
        assert e.value.response.headers["X-Error-Code"] == "RepoNotFound"
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("user/secret", "f.txt", token=token)
    with pytest.raises(HfHubHTTPError) as e:  # an unknown token is refused outright
        api.model_info("user/secret", token="hf_not_a_known_token_123456")
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as e:  # writing to another user's namespace
        api.upload_file(path_or_fileobj=b"y", path_in_repo="g.txt", repo_id="user/secret", token=OTHER_TOKEN)
    assert e.value.response.status_code in (403, 404)

    api.create_repo("gated")
    api.upload_file(path_or_fileobj=b"g", path_in_repo="w.txt", repo_id="user/gated")
    hub_server.set_repo_settings("user/gated", gated=True)
    with pytest.raises(GatedRepoError) as e:
        hf_hub_download("user/gated", "w.txt", token=OTHER_TOKEN)
    assert e.value.response.status_code == 403
    hub_server.set_repo_settings("user/gated", grant=["other"])
    assert open(hf_hub_download("user/gated", "w.txt", token=OTHER_TOKEN)).read() == "g"

    # no token in any access log or server output
    out = capfd.readouterr()
    assert USER_TOKEN not in json.dumps(hub_server.requests) + out.out + out.err


def test_validate_yaml_rejects_bad_model_index(hub_server):
    api = HfApi()
    api.create_repo("carded")
    head = hub_server.head("user/carded")
    good = (
        "---\nlicense: apache-2.0\nmodel-index:\n- name: m\n  results:\n  - task: {type: image-classification}\n"
        "    dataset: {name: Office-31 webcam, type: office31}\n    metrics:\n    - {type: accuracy, value: 0.9}\n"
        "---\n# Card\n"
    )
    bad_index = "---\nmodel-index:\n- name: m\n  results:\n  - task: image-classification\n---\n"
    bad_yaml = "---\nlicense: [unclosed\n---\n"
    hf.ModelCard(good).validate()
    # a card the client parses but whose metric value is not a number: only the server catches it
    with pytest.raises(ValueError, match="value"):
        hf.ModelCard(good.replace("value: 0.9", "value: [0.9]")).validate()
    for card in (bad_index, bad_yaml):  # create_commit posts README.md to validate-yaml first
        with pytest.raises(ValueError, match="Invalid metadata"):
            api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="user/carded")
    assert hub_server.head("user/carded") == head
    api.upload_file(path_or_fileobj=good.encode(), path_in_repo="README.md", repo_id="user/carded")
    assert hf.ModelCard.load("user/carded").data.eval_results[0].metric_value == 0.9


# ----------------------------------------------------------------------------------------------
# Fault injection
# ----------------------------------------------------------------------------------------------
def test_transient_lfs_failure_is_retried(hub_server, tmp_path):
    HfApi().create_repo("flaky")
    hub_server.faults.add("lfs_upload", status=503, times=1)
    HfApi().upload_folder(folder_path=_folder(tmp_path), repo_id="user/flaky")
    assert hub_server.faults.fired["lfs_upload"] == 1 and hub_server.faults.seen["lfs_upload"] == 2
    assert "weights/model.safetensors" in hub_server.files("user/flaky")


def test_persistent_lfs_failure_leaves_repo_unchanged(hub_server, tmp_path):
    api = HfApi()
    api.create_repo("broken")
    before = _state(hub_server, "user/broken")
    hub_server.faults.add("lfs_upload", status=500, times=None)
    with pytest.raises(RuntimeError) as e:  # huggingface_hub wraps it: RuntimeError("Error while uploading ...")
        api.upload_folder(folder_path=_folder(tmp_path), repo_id="user/broken")
    assert _http_status(e.value) == 500
    assert hub_server.faults.seen["lfs_upload"] == 6  # 1 try + 5 retries
    assert _state(hub_server, "user/broken") == before
    assert not any(r["path"].endswith("/commit/main") for r in hub_server.requests)


def test_dropped_commit_does_not_apply_and_rerun_completes(hub_server, tmp_path):
    api = HfApi()
    api.create_repo("dropped")
    before = _state(hub_server, "user/dropped")
    d = _folder(tmp_path)
    hub_server.faults.add("commit", drop=True)
    with pytest.raises(httpx2.RemoteProtocolError, match="disconnected"):  # the hub client's transport error
        api.upload_folder(folder_path=d, repo_id="user/dropped")
    assert _state(hub_server, "user/dropped") == before
    uploads = hub_server.faults.seen.get("lfs_upload", 0)
    ci = api.upload_folder(folder_path=d, repo_id="user/dropped")  # the same command again
    assert hub_server.head("user/dropped") == ci.oid
    assert hub_server.files("user/dropped")["config.json"] == (d / "config.json").read_bytes()
    assert hub_server.faults.seen.get("lfs_upload", 0) == uploads  # LFS blob already there: not re-sent


def test_stale_parent_commit_gets_412(hub_server):
    api = HfApi()
    api.create_repo("racy")
    old = hub_server.head("user/racy")
    api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="user/racy")
    new = hub_server.head("user/racy")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit("user/racy", [CommitOperationAdd("b.txt", b"2")], commit_message="x", parent_commit=old)
    assert e.value.response.status_code == 412 and hub_server.head("user/racy") == new
    # the same, injected through the HTTP control endpoint (as a test in another process would)
    req = urllib.request.Request(
        f"{hub_server.url}/_test/faults",
        method="POST",
        data=json.dumps({"point": "commit", "status": 412, "retry_after": None}).encode(),
    )
    assert json.load(urllib.request.urlopen(req))["status"] == 412
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit("user/racy", [CommitOperationAdd("b.txt", b"2")], commit_message="x", parent_commit=new)
    assert e.value.response.status_code == 412 and hub_server.head("user/racy") == new
    # an lfsFile whose content was never uploaded is refused (raw ndjson through the client's session)
    line = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 3}}
    payload = "\n".join(json.dumps(x) for x in ({"key": "header", "value": {"summary": "s"}}, line))
    r = hf.utils.get_session().post(
        f"{hub_server.url}/api/models/user/racy/commit/main",
        content=payload,
        headers={"Authorization": f"Bearer {USER_TOKEN}", "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 422 and hub_server.head("user/racy") == new


def test_concurrent_commits_are_serialised(hub_server):
    from concurrent.futures import ThreadPoolExecutor

    api = HfApi()
    api.create_repo("busy")

    def commit(i):
        return api.create_commit("user/busy", [CommitOperationAdd(f"f{i}.txt", str(i).encode())], commit_message=str(i))

    with ThreadPoolExecutor(6) as pool:
        oids = [c.oid for c in pool.map(commit, range(6))]
    assert sorted(hub_server.files("user/busy")) == [".gitattributes"] + [f"f{i}.txt" for i in range(6)]
    history = api.list_repo_commits("user/busy")
    assert len(history) == 7 and {c.commit_id for c in history[:6]} == set(oids)  # linear, nothing lost


def test_a_held_request_waits_then_is_served_as_usual(hub_server):
    """faults.hold orders two clients' requests exactly (a race test's tool): the held commit waits, another
    client's commit lands meanwhile, and the held one is then answered by the Hub's own rules (412 here)."""
    import threading

    api = HfApi()
    api.create_repo("held")
    first = hub_server.head("user/held")
    hold = hub_server.faults.hold("commit")
    outcome = []

    def held_commit():
        try:
            api.create_commit("user/held", [CommitOperationAdd("a.txt", b"a")], commit_message="a", parent_commit=first)
        except HfHubHTTPError as err:
            outcome.append(err.response.status_code)

    thread = threading.Thread(target=held_commit)
    thread.start()
    assert hold.wait_reached(30)
    other = api.create_commit("user/held", [CommitOperationAdd("b.txt", b"b")], commit_message="b")  # not held
    assert thread.is_alive() and hub_server.head("user/held") == other.oid
    hold.release()
    thread.join(30)
    assert outcome == [412] and hub_server.head("user/held") == other.oid
    assert hub_server.faults.fired == {}  # a hold is latency, never an injected fault


def test_cli_prints_url(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf_transfer.testing.hub_server", "--root", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        body = json.load(urllib.request.urlopen(f"{url}/api/whoami-v2"))
        assert body["name"] == "user"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_stopped_server_answers_nothing_on_kept_alive_connections(tmp_path):
    """Clients pool connections: "server down" tests need stop() to close those too, not only the socket
    that accepts new ones."""
    import http.client

    server = HubTestServer(tmp_path).start()
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
    conn.request("GET", "/api/whoami-v2")
    assert json.loads(conn.getresponse().read())["name"] == "user"
    server.stop()
    with pytest.raises(ConnectionError):
        conn.request("GET", "/api/whoami-v2")
        conn.getresponse()


# ----------------------------------------------------------------------------------------------
# datasets, transformers, timm
# ----------------------------------------------------------------------------------------------
def test_datasets_push_to_hub_and_load_dataset(hub_server):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    images = [Image.new("RGB", (8, 8), color=(40 * i, 0, 0)) for i in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1, 0]}, features=features)
    ds.push_to_hub("user/tiny-ds")
    ds.push_to_hub("user/tiny-ds", split="test")  # a second commit, with a parentCommit
    loaded = datasets.load_dataset("user/tiny-ds", split="train")
    assert loaded.features["label"].names == ["cat", "dog"] and loaded["label"] == [0, 1, 1, 0]
    assert loaded[1]["image"].getpixel((0, 0)) == (40, 0, 0)
    stream = datasets.load_dataset("user/tiny-ds", split="test", streaming=True)
    assert [row["label"] for row in stream] == [0, 1, 1, 0]


def test_transformers_push_and_from_pretrained(hub_server, run_with_hub, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    model.push_to_hub("tiny-vit")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reloaded = transformers.AutoModelForImageClassification.from_pretrained("user/tiny-vit").eval()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        assert torch.allclose(reloaded(pixel_values=x).logits, expected, atol=1e-6)
    # a fresh interpreter with an empty cache sees the same model
    out = tmp_path / "logits.pt"
    run_with_hub(f"""
        import torch, transformers
        m = transformers.AutoModelForImageClassification.from_pretrained("user/tiny-vit").eval()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.save(m(pixel_values=x).logits, {str(out)!r})
    """)
    assert torch.allclose(torch.load(out), expected, atol=1e-6)


def test_timm_push_to_hf_hub_and_create_model(hub_server):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
    timm.models.push_to_hf_hub(model, "user/tiny-timm")
    reloaded = timm.create_model("hf-hub:user/tiny-timm", pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=1e-6)


def test_space_repos_are_served(hub_server):
    """A Space is created with its sdk (refused without one, as on the Hub), reports it, takes commits and pull
    requests and is downloaded like any repo."""
    api = HfApi()
    raw = httpx2.post(  # the client checks the sdk itself: the server's own check, over HTTP
        f"{hub_server.url}/api/repos/create",
        json={"name": "demo", "type": "space"},
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )
    assert raw.status_code == 400 and "sdk" in raw.json()["error"]
    assert api.create_repo("user/demo", repo_type="space", space_sdk="gradio", private=True).endswith(
        "spaces/user/demo"
    )
    api.upload_file(path_or_fileobj=b"print('hi')\n", path_in_repo="app.py", repo_id="user/demo", repo_type="space")
    info = api.space_info("user/demo")
    assert (
        info.sdk == "gradio" and info.private and {s.rfilename for s in info.siblings} == {".gitattributes", "app.py"}
    )
    pr = api.create_commit(
        "user/demo", [CommitOperationAdd("b.txt", b"b")], commit_message="b", repo_type="space", create_pr=True
    )
    assert pr.pr_revision == "refs/pr/1" and "b.txt" not in hub_server.files("user/demo", "space")
    folder = snapshot_download("user/demo", repo_type="space")
    assert open(os.path.join(folder, "app.py")).read() == "print('hi')\n"
    assert hub_server.files("user/demo", "space", revision="refs/pr/1")["b.txt"] == b"b"
