"""Downloads for real: `dalle pull` and `dalle gen` through the real huggingface_hub client against a stand-in hub
served on 127.0.0.1 (tests/fakehub.py), pointed to with HF_ENDPOINT.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so the CLI runs in subprocesses
with the environment set; the one in-process test patches the cache location it reads at call time.
"""

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image
from typer.testing import CliRunner

from dalle_cli.cli import app
from dalle_cli.registry import format_size
from fakehub import FakeHub, Repo

ROOT = Path(__file__).resolve().parent.parent
TINY_FILES = ["model_index.json", "*/config.json", "*/scheduler_config.json", "tokenizer/*.json", "tokenizer/*.txt",
              "*/*.safetensors"]
PICKLE = b"\x80\x04pickle twin: must never be fetched" * 64


def dalle(*args: object, env: dict[str, str], offline: bool = False) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DALLE_"))}
    environment.update(env, PYTHONPATH=str(ROOT), **({"HF_HUB_OFFLINE": "1"} if offline else {}))
    return subprocess.run([sys.executable, "-m", "dalle_cli.cli", *map(str, args)], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def error_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The one error line of a failed run (asserting it is the only one, with no traceback)."""
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]) and "Traceback" not in result.stderr
    return errors[0]


def with_twins(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files plus the pickle and foreign-framework twins real repos carry next to their safetensors."""
    twins = {}
    for path in files:
        if path.endswith(".safetensors"):
            folder, _, name = path.rpartition("/")
            twin = "pytorch_model.bin" if name == "model.safetensors" else name.replace(".safetensors", ".bin")
            twins[f"{folder}/{twin}".lstrip("/")] = PICKLE
    return {**files, **twins, "flax_model.msgpack": PICKLE, "tf_model.h5": PICKLE, "README.md": b"# tiny\n"}


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repos(tiny_karlo: Path) -> dict[str, Repo]:
    everything = folder_files(tiny_karlo)
    model = {p: c for p, c in everything.items() if not p.startswith(("image_encoder/", "feature_extractor/"))}
    encoder = {"config.json": everything["image_encoder/config.json"],
               "model.safetensors": everything["image_encoder/model.safetensors"],
               "preprocessor_config.json": everything["feature_extractor/preprocessor_config.json"]}
    big = random.Random(0).randbytes(25_000_000)
    return {
        "tiny": Repo("dalle-test/tiny-karlo", with_twins(model)),
        "tiny-clip": Repo("dalle-test/tiny-clip", with_twins(encoder)),
        "big": Repo("dalle-test/big", {"config.json": b'{"a": 1}', "model.safetensors": big,
                                       "pytorch_model.bin": PICKLE}),
        "pickles": Repo("dalle-test/pickles", {"model_index.json": b"{}", "unet/config.json": b"{}",
                                               "unet/diffusion_pytorch_model.bin": PICKLE}),
    }


def wanted(repo: Repo, patterns: list[str]) -> dict[str, bytes]:
    from huggingface_hub.utils import filter_repo_objects

    return {p: repo.files[p] for p in filter_repo_objects(list(repo.files), allow_patterns=patterns)}


@pytest.fixture(scope="module")
def registry(repos: dict[str, Repo], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny, clip = repos["tiny"], repos["tiny-clip"]
    clip_files = ["config.json", "preprocessor_config.json", "model.safetensors"]
    path = tmp_path_factory.mktemp("registry") / "registry.json"
    path.write_text(json.dumps({"models": {
        "tiny": {"repo_id": tiny.repo_id, "revision": tiny.commit, "files": TINY_FILES, "license": "mit",
                 "size_bytes": sum(map(len, wanted(tiny, TINY_FILES).values())), "size_exact": True,
                 "defaults": {"prior_steps": 2, "decoder_steps": 2, "sr_steps": 2}, "image_encoder": "tiny-clip"},
        "tiny-clip": {"kind": "image_encoder", "repo_id": clip.repo_id, "revision": clip.commit, "files": clip_files,
                      "size_bytes": sum(map(len, wanted(clip, clip_files).values())), "license": "mit"},
    }}))
    return path


@pytest.fixture(scope="module")
def hub(repos: dict[str, Repo]):  # noqa: ANN201
    with FakeHub(list(repos.values())) as server:
        yield server


@pytest.fixture(scope="module")
def pulled(hub: FakeHub, repos: dict[str, Repo], registry: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """`dalle pull tiny` into a fresh HF_HOME: (environment, result, requests the hub saw)."""
    env = {"HF_HOME": str(tmp_path_factory.mktemp("hf")), "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test_token",
           "DALLE_REGISTRY": str(registry)}
    seen = len(hub.log)
    result = dalle("pull", "tiny", env=env)
    return env, result, hub.log[seen:]


def test_pull_fetches_only_listed_safe_files_into_the_standard_cache(pulled, repos: dict[str, Repo]) -> None:  # noqa: ANN001
    env, result, requests = pulled
    assert result.returncode == 0, result.stderr
    tiny, clip = repos["tiny"], repos["tiny-clip"]
    model_files = wanted(tiny, TINY_FILES)
    clip_files = wanted(clip, ["config.json", "preprocessor_config.json", "model.safetensors"])
    # The sizes are said before downloading, as huggingface_hub's file listing gives them.
    assert (f"downloading tiny: {format_size(sum(map(len, model_files.values())))} in {len(model_files)} files from "
            f"dalle-test/tiny-karlo@{tiny.commit[:7]}") in result.stderr
    assert f"downloading tiny-clip: {format_size(sum(map(len, clip_files.values())))} in 3 files" in result.stderr
    # Only the listed files were asked for; no pickle twin, foreign format or README was even looked at.
    asked = {r.path.split("/resolve/")[1].split("/", 1)[1] for r in requests if "/resolve/" in r.path}
    assert asked == set(model_files) | set(clip_files)
    assert not [p for p in asked if p.endswith((".bin", ".msgpack", ".h5", ".md"))]
    assert all(r.expected for r in requests), [r.path for r in requests if not r.expected]
    # The files sit in huggingface_hub's cache under HF_HOME, byte for byte.
    snapshot = Path(env["HF_HOME"]) / "hub" / "models--dalle-test--tiny-karlo" / "snapshots" / tiny.commit
    assert result.stdout.strip() == str(snapshot)
    assert folder_files(snapshot) == model_files
    # HF_TOKEN goes to the hub, never to the CDN the weights are redirected to.
    model_calls = [r for r in requests if r.server == "hub" and r.path != "/api/agent-harnesses"]  # not telemetry
    assert {r.headers.get("authorization") for r in model_calls} == {"Bearer hf_test_token"}
    assert {r.headers.get("authorization") for r in requests if r.server == "cdn"} == {None}


def test_after_a_pull_nothing_is_fetched_again_and_offline_gen_works(pulled, hub: FakeHub, repos: dict[str, Repo],
                                                                     tmp_path: Path) -> None:  # noqa: ANN001
    env = pulled[0]
    seen = len(hub.log)
    again = dalle("pull", "tiny", env=env)
    assert again.returncode == 0 and "downloading" not in again.stderr
    assert [r.path for r in hub.log[seen:] if r.method in ("GET", "HEAD") and "/api/agent" not in r.path] == []

    listed = dalle("models", env=env, offline=True)
    assert listed.returncode == 0
    assert "yes (" in next(line for line in listed.stdout.splitlines() if line.startswith("tiny "))

    seen = len(hub.log)
    made = dalle("gen", "a red circle", "-m", "tiny", "--seed", 5, "--json", "-o", tmp_path, env=env, offline=True)
    assert made.returncode == 0, made.stderr
    (record,) = [json.loads(line) for line in made.stdout.splitlines()]
    assert (record["repo_id"], record["revision"]) == ("dalle-test/tiny-karlo", repos["tiny"].commit)
    assert record["settings"]["prior_steps"] == 2  # the registry entry's defaults
    assert Path(record["path"]).is_file()
    assert hub.log[seen:] == []  # offline means not a single request


LIBRARY_VARY = """
import json, sys
from PIL import Image
import dalle_cli

notes = []
model = dalle_cli.load("tiny", on_notice=notes.append)
loaded = list(notes)
[image] = model.vary([Image.open(sys.argv[1])], [9])
image.save(sys.argv[2])
print(json.dumps({"at_load": loaded, "notes": notes, "extras": model.info.extras}))
"""


def test_the_library_loads_an_alias_and_varies_from_a_fresh_cache(hub: FakeHub, repos: dict[str, Repo],
                                                                   registry: Path, tiny_karlo: Path,
                                                                   tmp_path: Path) -> None:
    """`dalle_cli.load("tiny").vary(...)` with nothing downloaded: loading fetches the model, the first variation
    fetches the separate image encoder the registry names (announced to `on_notice`), and the variation equals the
    one made from the tiny model's own folder, whose image encoder holds the same weights."""
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(picture)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DALLE_"))}
    environment.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.endpoint, DALLE_REGISTRY=str(registry),
                       PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", LIBRARY_VARY, str(picture), str(tmp_path / "made.png")],
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    asking = f"asking {hub.endpoint} for the files of "  # each fetch first says what it asks the Hub

    def said(note: str) -> str:
        return note[len(asking):].split(" ")[0] if note.startswith(asking) else note.split(":")[0]

    tiny = f"dalle-test/tiny-karlo@{repos['tiny'].commit[:7]}"
    clip = f"dalle-test/tiny-clip@{repos['tiny-clip'].commit[:7]}"
    assert [said(note) for note in report["at_load"]] == [tiny, "downloading tiny on first use"]
    assert [said(note) for note in report["notes"]] == [tiny, "downloading tiny on first use", clip,
                                                        "downloading tiny-clip on first use"]
    assert report["extras"] == {"image_encoder": f"dalle-test/tiny-clip@{repos['tiny-clip'].commit}"}

    from dalle_cli import load
    from dalle_cli.families.unclip.settings import UnCLIPSettings

    local = load(str(tiny_karlo), device="cpu")
    [expected] = local.vary([Image.open(picture)], [9], UnCLIPSettings(prior_steps=2, decoder_steps=2, sr_steps=2))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "made.png")), np.asarray(expected))


def openai_style_clip(tiny_karlo: Path, folder: Path) -> dict[str, bytes]:
    """A stand-in of openai/clip-vit-large-patch14 at toy size: a full CLIPModel (both towers, the vision tower and
    projection copied from the tiny model's image encoder) and the legacy CLIPFeatureExtractor preprocessor config."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection.from_pretrained(tiny_karlo / "image_encoder")
    text = json.loads((tiny_karlo / "text_encoder" / "config.json").read_text())
    config = CLIPConfig(text_config=text, vision_config=vision.config.to_dict(), projection_dim=32)
    both = CLIPModel(config)
    missing, unexpected = both.load_state_dict(vision.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("text_", "logit_scale")) for k in missing)
    both.save_pretrained(folder, safe_serialization=True)
    processor = json.loads((tiny_karlo / "feature_extractor" / "preprocessor_config.json").read_text())
    legacy = {"crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": processor["image_mean"],
              "image_std": processor["image_std"], "resample": 3, "size": 32}
    return {**folder_files(folder), "preprocessor_config.json": json.dumps(legacy).encode()}


def test_the_real_karlo_entries_pull_and_vary_offline(tiny_karlo: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """weights/registry.json itself: `karlo` and its image encoder, served at toy size under their real repo ids."""
    from dalle_cli.registry import DEFAULT_PATH, load_registry

    entries = load_registry(DEFAULT_PATH)
    karlo, clip = entries["karlo"].repos["model"], entries[entries["karlo"].image_encoder].repos["image_encoder"]
    everything = folder_files(tiny_karlo)
    model = {p: c for p, c in everything.items() if not p.startswith(("image_encoder/", "feature_extractor/"))}
    repos = [Repo(karlo.repo_id, with_twins(model), commit=karlo.revision),
             Repo(clip.repo_id, with_twins(openai_style_clip(tiny_karlo, tmp_path / "clip")), commit=clip.revision)]
    env = {"HF_HOME": str(tmp_path / "hf")}
    with FakeHub(repos) as hub:
        result = dalle("pull", "karlo", env={**env, "HF_ENDPOINT": hub.endpoint})
        assert result.returncode == 0, result.stderr
        assert sorted(hub.fetched()) == sorted([*karlo.files, *clip.files])  # exactly the files the entries list

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(picture)
    settings = ["--decoder-steps", "2", "--sr-steps", "2", "--seed", "9", "--json"]
    runner = CliRunner()
    via_registry = runner.invoke(app, ["vary", str(picture), "-m", "karlo", "--offline", "-o", str(tmp_path / "a"),
                                       *settings], env={"DALLE_REGISTRY": None})
    assert via_registry.exit_code == 0, via_registry.output
    record = json.loads(via_registry.stdout)
    assert (record["repo_id"], record["revision"]) == (karlo.repo_id, karlo.revision)
    assert record["image_encoder"] == f"{clip.repo_id}@{repos[1].commit}"
    # The same vision weights as the image_encoder/ folder inside the tiny model: the same picture.
    via_folder = runner.invoke(app, ["vary", str(picture), "-m", str(tiny_karlo), "-o", str(tmp_path / "b"),
                                     *settings])
    assert via_folder.exit_code == 0, via_folder.output
    made = [np.asarray(Image.open(json.loads(r.stdout)["path"])) for r in (via_registry, via_folder)]
    assert np.array_equal(made[0], made[1])


def test_a_dropped_download_resumes_with_a_range_request(hub: FakeHub, repos: dict[str, Repo],
                                                         tmp_path: Path) -> None:
    big = repos["big"]
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint}
    hub.drop_once["model.safetensors"] = 15_000_000  # the connection closes after 15 MB of 25 MB
    seen = len(hub.log)
    result = dalle("pull", f"{big.repo_id}@{big.commit}", env=env)
    assert result.returncode == 0, result.stderr
    gets = [r for r in hub.log[seen:] if r.server == "cdn" and r.method == "GET"]
    assert [r.headers.get("range") for r in gets] == [None, f"bytes={10 * 2**20}-"]  # the bytes kept, then the rest
    snapshot = Path(result.stdout.strip())
    assert hashlib.sha256((snapshot / "model.safetensors").read_bytes()).digest() == \
        hashlib.sha256(big.files["model.safetensors"]).digest()
    assert sorted(folder_files(snapshot)) == ["config.json", "model.safetensors"]  # not the .bin twin


def test_an_interrupted_pull_keeps_what_it_fetched(hub: FakeHub, repos: dict[str, Repo], tmp_path: Path) -> None:
    big = repos["big"]
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint}
    hub.fail["model.safetensors"] = 1
    seen = len(hub.log)
    assert "the Hub answered 500 for dalle-test/big@" in error_line(dalle("pull", big.repo_id, env=env), 1)
    resumed = dalle("pull", big.repo_id, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "25.0 MB in 1 files" in resumed.stderr and "already here" in resumed.stderr
    assert sorted(hub.fetched(since=seen)) == ["config.json", "model.safetensors", "model.safetensors"]


def test_download_failures_are_one_line(hub: FakeHub, registry: Path, tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint, "DALLE_REGISTRY": str(registry)}
    line = error_line(dalle("gen", "a cat", "-m", "tiny", env=env, offline=True), 1)
    assert "tiny is not downloaded and dalle is offline: it needs " in line and "run `dalle pull tiny`" in line
    line = error_line(dalle("pull", "nobody/nothing", env=env), 2)
    assert f"unknown model 'nobody/nothing': {hub.endpoint} has no repo nobody/nothing" in line
    assert "dalle-test/big has no revision 'v9'" in error_line(dalle("pull", "dalle-test/big@v9", env=env), 2)
    assert "has only pickle weights in unet" in error_line(dalle("pull", "dalle-test/pickles", env=env), 1)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = {**env, "HF_ENDPOINT": closed}
    for args in (["pull", "tiny"], ["gen", "a cat", "-m", "tiny"]):
        assert error_line(dalle(*args, env=unreachable), 1).startswith(
            f"error: cannot reach the Hugging Face Hub at {closed}")


def test_kandinsky_pulls_both_repos_and_text_to_image_skips_the_image_encoder_once_cached(
        tiny_kandinsky: tuple[Path, Path], tmp_path: Path) -> None:
    """weights/registry.json's `kandinsky-2.2`, served at toy size under its real repo ids and commits: `dalle pull`
    fetches exactly the listed files of both repos; `dalle gen` on a fresh cache fetches the image encoder only to
    compute the zero-image embedding, and not at all once that embedding is cached."""
    from dalle_cli.registry import DEFAULT_PATH, load_registry

    entry = load_registry(DEFAULT_PATH)["kandinsky-2.2"]
    prior, decoder = tiny_kandinsky
    served = {"decoder": Repo(entry.repos["decoder"].repo_id, with_twins(folder_files(decoder)),
                              commit=entry.repos["decoder"].revision),
              "prior": Repo(entry.repos["prior"].repo_id, with_twins(folder_files(prior)),
                            commit=entry.repos["prior"].revision)}
    listed = {repo: [*entry.repos[repo].files, *(entry.repos["image_encoder"].files if repo == "prior" else [])]
              for repo in served}
    steps = ["--prior-steps", "2", "--decoder-steps", "2", "--width", "64", "--height", "64", "--seed", "1"]
    with FakeHub(list(served.values())) as hub:
        env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint, "DALLE_CACHE": str(tmp_path / "c")}
        pulled = dalle("pull", "kandinsky-2.2", env=env)
        assert pulled.returncode == 0, pulled.stderr
        assert sorted(hub.fetched()) == sorted(listed["decoder"] + listed["prior"])

        fresh = {**env, "HF_HOME": str(tmp_path / "hf2"), "DALLE_CACHE": str(tmp_path / "c2")}
        seen = len(hub.log)
        first = dalle("gen", "a cat", "-m", "kandinsky-2.2", *steps, "-o", tmp_path / "a", env=fresh)
        assert first.returncode == 0, first.stderr
        assert "image_encoder/model.safetensors" in hub.fetched(since=seen)

        cached = {**fresh, "HF_HOME": str(tmp_path / "hf3")}
        seen = len(hub.log)
        second = dalle("gen", "a cat", "-m", "kandinsky-2.2", *steps, "-o", tmp_path / "b", env=cached)
        assert second.returncode == 0, second.stderr
        fetched = hub.fetched(since=seen)
        assert "unet/diffusion_pytorch_model.safetensors" in fetched
        assert not [f for f in fetched if f.startswith("image_encoder/")]
    made = [np.asarray(Image.open(next((tmp_path / d).glob("*.png")))) for d in ("a", "b")]
    assert np.array_equal(made[0], made[1])
