"""The CLI's parts that need no model: prompt files, file names, atomic PNG writing, the registry, settings."""

import errno
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from dalle_cli.cli.batch import Planner, Prompt, batches, parse_prompts, read_prompt_file
from dalle_cli.errors import ConfigError, DalleError, UsageError
from dalle_cli.cli.naming import DEFAULT_TEMPLATE, check_template, render_name, slugify
from dalle_cli.cli.outputs import check_writable, contact_sheet, grid_columns, read_record, write_png
from dalle_cli.families.unclip.settings import UnCLIPSettings as Settings
from dalle_cli.registry import DEFAULT_PATH, COMMIT_SHA, format_size, load_registry
from dalle_cli.sources import locate

from reference import REFERENCE


def test_prompt_file_skips_blanks_and_comments_and_reads_json_lines() -> None:
    text = "\ufeff# a comment\n\nan astronaut riding a horse  \n  # indented comment\n" \
           '{"prompt": "a bowl of soup", "seed": 5, "n": 2, "decoder_steps": 3}\n' \
           '{"prompt": "a cat", "settings": {"sr_steps": 4, "prior_guidance": 2}, "path": "x.png", "seconds": 1}\n'
    prompts = list(parse_prompts(text.lstrip("\ufeff").splitlines(), "p.txt"))
    assert [p.text for p in prompts] == ["an astronaut riding a horse", "a bowl of soup", "a cat"]
    assert [p.where for p in prompts] == ["p.txt:3", "p.txt:5", "p.txt:6"]
    assert (prompts[1].seed, prompts[1].n, prompts[1].settings) == (5, 2, {"decoder_steps": 3})
    assert prompts[2].settings == {"sr_steps": 4, "prior_guidance": 2}


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a cat", "seed": 5,}', "p.txt:2: invalid JSON"),
    ('{"seed": 5}', "p.txt:2: 'prompt' must be a non-empty string"),
    ('{"prompt": "  "}', "p.txt:2: 'prompt' must be a non-empty string"),
    ('{"prompt": "a cat", "sead": 5}', "p.txt:2: unknown key 'sead'"),
    ('{"prompt": "a cat", "seed": -1}', "p.txt:2: seed must be an integer"),
    ('{"prompt": "a cat", "n": 0}', "p.txt:2: n must be an integer from 1"),
    ('{"prompt": "a cat", "prior_steps": 1}', "p.txt:2: prior_steps must be an integer from 2 to 1000"),
    ('{"prompt": "a cat", "decoder_guidance": "high"}', "p.txt:2: decoder_guidance must be a number"),
    ('{"prompt": "a cat", "settings": {"zeta": 1}}', "p.txt:2: unknown setting 'zeta'"),
])
def test_bad_json_lines_name_their_line(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        list(parse_prompts(f"fine prompt\n{line}\n".splitlines(), "p.txt"))


def test_empty_prompt_files_are_errors(tmp_path: Path) -> None:
    for text in ("", "\n\n", "# only a comment\n   \n"):
        with pytest.raises(UsageError, match="holds no prompts"):
            list(parse_prompts(text.splitlines(), "p.txt"))
    with pytest.raises(UsageError, match="cannot read the prompt file"):
        list(read_prompt_file(tmp_path / "missing.txt", "missing.txt"))
    (tmp_path / "latin1.txt").write_bytes("a cat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="latin1.txt:2: not UTF-8"):
        list(read_prompt_file(tmp_path / "latin1.txt", "latin1.txt"))
    (tmp_path / "bom.txt").write_bytes("\ufeffünïcode ✓\n".encode())
    assert [p.text for p in read_prompt_file(tmp_path / "bom.txt", "bom.txt")] == ["ünïcode ✓"]


def test_plan_gives_image_i_seed_plus_i_and_prompt_overrides() -> None:
    prompts = [Prompt("a red circle", "a"), Prompt("a blue square", "b", seed=100, n=3, settings={"sr_steps": 3})]
    karlo = locate("karlo")
    planner = Planner(DEFAULT_TEMPLATE, 2, 7, lambda item: ("karlo", karlo), lambda spec, op: Settings(2, 2, 2))
    jobs = list(planner.jobs(prompts))
    assert [(j.index, j.item, j.i, j.seed) for j in jobs] == [(0, 0, 0, 7), (1, 0, 1, 8), (2, 1, 0, 100),
                                                               (3, 1, 1, 101), (4, 1, 2, 102)]
    assert jobs[3].name == "0003-a-blue-square-101.png"
    assert jobs[0].settings == Settings(2, 2, 2) and jobs[2].settings == Settings(2, 2, 3)
    assert planner.base_seeded and planner.counts == {2, 3}
    # One engine call per batch: batches never mix settings, and keep the run's order within a setting.
    assert [[j.index for j in b] for b in batches(jobs, 2)] == [[0, 1], [2, 3], [4]]
    # However long the run, at most `open_groups` partial batches wait: here each prompt (2 images) has its own
    # settings, so each waits until three newer ones are open, and goes as a batch of 2.
    mixed = [Prompt("a", "x", settings={"sr_steps": k}) for k in range(2, 12)]
    assert [[j.index for j in b] for b in batches(planner.jobs(mixed), 4, open_groups=3)] == \
        [[k, k + 1] for k in range(0, 20, 2)]


def test_names_and_slugs() -> None:
    assert slugify("An astronaut riding a horse!") == "an-astronaut-riding-a-horse"
    assert slugify("Crème brûlée, Straße") == "creme-brulee-strae"
    assert slugify("日本の猫") == "image"
    assert len(slugify("word " * 40)) <= 60 and not slugify("word " * 40).endswith("-")
    assert render_name(DEFAULT_TEMPLATE, index=3, slug="an-astronaut-riding-a-horse", seed=42, i=0, item=0,
                       model="karlo") == "0003-an-astronaut-riding-a-horse-42.png"
    assert render_name("{model}_{seed:08d}.PNG", index=0, slug="", seed=7, i=0, item=0, model="x") == "x_00000007.PNG"
    for bad, message in [("{prompt}", "unknown field"), ("{slug}", "must hold"), ("{index", "not a valid"),
                         ("{index:d}/{seed}", None)]:
        if message:
            with pytest.raises(UsageError, match=message):
                check_template(bad)
    with pytest.raises(UsageError, match="path separator"):
        render_name("{index:d}/{seed}", index=0, slug="", seed=1, i=0, item=0, model="x")
    with pytest.raises(UsageError, match="--name"):
        render_name("{slug:d}", index=0, slug="a", seed=1, i=0, item=0, model="x")


def test_png_writes_are_atomic_never_overwrite_and_carry_the_record(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    first = write_png(red, tmp_path / "a.png", {"prompt": "ünïcode", "seed": 1})
    second = write_png(blue, tmp_path / "a.png", {"prompt": "b", "seed": 2})
    third = write_png(blue, tmp_path / "a.png", {"prompt": "c", "seed": 3})
    assert (first.name, second.name, third.name) == ("a.png", "a-1.png", "a-2.png")
    assert Image.open(first).getpixel((0, 0)) == (255, 0, 0)  # not overwritten
    assert read_record(first) == {"prompt": "ünïcode", "seed": 1, "path": str(first)}
    assert read_record(second)["path"] == str(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.png", "a-2.png", "a.png"]  # no temporary files


def test_a_full_disk_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DalleError, match="the disk is full: could not write .*a.png"):
        write_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", {})
    assert list(tmp_path.iterdir()) == []


def test_output_directory_checks(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "nested")
    assert not (tmp_path / "new").exists()  # checked, not made: a run that is refused later leaves nothing
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(UsageError, match="cannot write to the output directory"):
            check_writable(bad)


def test_contact_sheet_layout() -> None:
    images = [Image.new("RGB", (10, 6), c) for c in ("red", "green", "blue", "white", "black")]
    assert grid_columns(6, 3) == 3 and grid_columns(5, 1) == 3 and grid_columns(4, 1) == 2
    sheet = contact_sheet(images, 3, gap=2)
    assert sheet.size == (3 * 10 + 2 * 2, 2 * 6 + 2)
    assert sheet.getpixel((12 + 1, 1)) == (0, 128, 0) and sheet.getpixel((11, 1)) == (255, 255, 255)


def test_registry_entries() -> None:
    registry = load_registry(DEFAULT_PATH)
    karlo = registry["karlo"]
    repo = karlo.repos["model"]
    assert repo.repo_id == "kakaobrain/karlo-v1-alpha" and COMMIT_SHA.fullmatch(repo.revision)
    assert karlo.family == "unclip" and karlo.settings() == Settings(25, 25, 7, 4.0, 8.0)
    assert format_size(karlo.size_bytes) == "13.7 GB"
    assert karlo.license == "creativeml-openrail-m"
    # Every file Karlo needs, as the reference file tree lists it, and no pickle twin.
    listed = (REFERENCE / "kakaobrain__karlo-v1-alpha" / "FILES.md").read_text()
    for name in repo.files:
        assert f"| {name} |" in listed
    assert not [f for f in repo.files if not f.endswith((".json", ".txt", ".safetensors"))]
    encoder = registry[karlo.image_encoder]
    assert encoder.kind == "image_encoder" and encoder.repos["image_encoder"].repo_id == "openai/clip-vit-large-patch14"
    assert set(encoder.repos["image_encoder"].files) == {"config.json", "preprocessor_config.json", "model.safetensors"}
    assert COMMIT_SHA.fullmatch(encoder.repos["image_encoder"].revision)
    assert registry["shapes"].path == DEFAULT_PATH.parent / "shapes"


@pytest.mark.parametrize("entry,message", [
    ({"repo_id": "a/b", "revision": "main", "files": ["x.safetensors"]}, "40-hex commit sha"),
    ({"repo_id": "a/b", "revision": "a" * 40, "files": ["pytorch_model.bin"]}, "pickle or foreign"),
    ({"repo_id": "a/b", "revision": "a" * 40, "files": []}, "non-empty list"),
    ({"path": "x", "repo_id": "a/b"}, "exactly one of"),
    ({"path": "x", "defaults": {"prior_steps": 1}}, "prior_steps must be an integer from 2"),
    ({"path": "x", "image_encoder": "nothing"}, "not an image-encoder entry"),
    ({"path": "x", "colour": "red"}, "unknown key 'colour'"),
])
def test_registry_validation(tmp_path: Path, entry: dict, message: str) -> None:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": {"m": entry}}))
    with pytest.raises(ConfigError, match=message):
        load_registry(path)


def test_settings_overrides() -> None:
    assert Settings().updated({"prior_steps": 3, "decoder_guidance": 2}, "x") == \
        Settings(prior_steps=3, decoder_guidance=2.0)
    for raw in ({"prior_steps": 2.5}, {"sr_steps": True}, {"prior_guidance": 0.5}, {"sr_steps": 1001}):
        with pytest.raises(UsageError):
            Settings().updated(raw, "x", UsageError)


def test_the_kandinsky_entry() -> None:
    """kandinsky-2.2: both repos pinned to commits, only safetensors and configs, each listed file in the reference
    file trees, and the image encoder a part of its own (fetched only when an operation needs it)."""
    entry = load_registry(DEFAULT_PATH)["kandinsky-2.2"]
    assert entry.family == "kandinsky" and entry.license == "apache-2.0" and set(entry.repos) == {
        "decoder", "prior", "image_encoder"}
    trees = {"decoder": "kandinsky-community__kandinsky-2-2-decoder", "prior": "kandinsky-community__kandinsky-2-2-prior",
             "image_encoder": "kandinsky-community__kandinsky-2-2-prior"}
    for role, repo in entry.repos.items():
        assert COMMIT_SHA.fullmatch(repo.revision) and repo.repo_id == "kandinsky-community/" + trees[role].split("__")[1]
        listed = (REFERENCE / trees[role] / "FILES.md").read_text()
        for name in repo.files:
            assert f"| {name} |" in listed, name
            assert name.endswith((".json", ".txt", ".safetensors")), name
    assert all(f.startswith("image_encoder/") for f in entry.repos["image_encoder"].files)
    assert not [f for f in entry.repos["prior"].files if f.startswith("image_encoder/")]
    assert entry.size_bytes > 10_573_556_608 + 5_283_689_948
