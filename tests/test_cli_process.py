"""`dalle` as a separate process: startup without torch, Ctrl-C in the middle of a batch, and the examples/ scripts."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from dalle_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2"]


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DALLE_"))}
    return {**env, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), **extra}


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter with the test environment; fails the test unless it exits 0."""
    result = subprocess.run([sys.executable, "-c", code], env=environment(tmp_path), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_help_and_models_do_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from dalle_cli.cli import app\n"
        "for args in (['--help'], ['gen', '--help'], ['vary', '--help'], ['pull', '--help'], ['models'],\n"
        "             ['models', '--json'], ['--version']):\n"
        "    try:\n"
        "        app(args, prog_name='dalle')\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    result = run_python(code, tmp_path)
    assert result.stdout.strip().endswith("torch imported: False")
    for option in ("--prior-steps", "--decoder-guidance", "--skip-existing", "--batch-size", "--low-vram"):
        assert option in result.stdout
    assert "karlo" in result.stdout and "clip-vit-large-patch14" in result.stdout  # the models table


def test_a_shipped_model_resolves_without_the_hub_client(tmp_path: Path) -> None:
    """`dalle gen -m shapes` needs no network, so it must not pay for huggingface_hub's client and HTTP stack at
    start-up (about 0.3 s of the 3 s the issue allows)."""
    code = (
        "import sys\n"
        "from dalle_cli.sources import locate\n"
        "assert locate('shapes').folder('model').name == 'shapes'\n"
        "print('loaded:', [m for m in ('httpx2', 'huggingface_hub.hf_api', 'huggingface_hub._snapshot_download')\n"
        "                  if m in sys.modules])\n"
    )
    result = run_python(code, tmp_path)
    assert result.stdout.strip() == "loaded: []"


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tiny_karlo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["gen", "a red circle", "-m", str(tiny_karlo), "-n", "5", "--batch-size", "1", "--seed", "3", "-o", str(out),
            *STEPS]
    # As in a terminal's foreground: SIGINT at its default, even when the test run itself was started as a
    # background job (which starts with SIGINT ignored, and Python then keeps ignoring it).
    process = subprocess.Popen([sys.executable, "-m", "dalle_cli.cli", *args], env=environment(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = process.stdout.readline()  # the first image is written: the run is in the middle of its batches
    assert first.strip().endswith(".png"), process.stderr.read()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    written = sorted(p for p in out.iterdir() if p.name != ".dalle")  # .dalle/ holds the run's manifest
    assert 1 <= len(written) < 5
    assert all(p.suffix == ".png" and not p.name.startswith(".") for p in written)  # no temporary file left
    for path in written:
        with Image.open(path) as image:
            image.load()  # every file is a whole PNG
    count = f"{len(written)} image{'s' * (len(written) != 1)}"
    assert stderr.strip().splitlines()[-1] == f"error: interrupted: {count} written to {out}"
    assert [first.strip(), *stdout.split()] == [str(p) for p in written]

    before = {p.name: p.read_bytes() for p in written}
    resumed = CliRunner().invoke(app, args)  # the same command finishes the run
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming an interrupted run in {out}: {len(written)} of 5 images are already made" in resumed.stderr
    assert sorted(p.name for p in out.iterdir() if p.name != ".dalle") == \
        [f"{k:04d}-a-red-circle-{3 + k}.png" for k in range(5)]
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_the_examples_run(tiny_karlo: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": {"tiny": {
        "path": str(tiny_karlo), "defaults": {"prior_steps": 2, "decoder_steps": 2, "sr_steps": 2}}}}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dalle").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dalle_cli.cli "$@"\n')
    (bin_dir / "dalle").chmod(0o755)
    env = environment(tmp_path, DALLE_MODEL="tiny", DALLE_REGISTRY=str(registry),
                      PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "examples"
    result = subprocess.run(["bash", str(ROOT / "examples" / "batch.sh"), str(out), "--device", "cpu"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert len(list((out / "plain").glob("*.png"))) == 4
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records] == [
        ("a red circle in the top left", 1), ("a red circle in the top left", 2),
        ("a small purple square above a yellow triangle", 7), ("a drawing of a pink circle", 42)]
    assert records[2]["settings"]["decoder_guidance"] == 4.0 and records[3]["settings"]["prior_guidance"] == 2.0
    assert (out / "jsonl" / "grid.png").is_file()
    assert len(list((out / "vary").glob("*.png"))) == 2
