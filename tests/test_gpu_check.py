"""benchmarks/gpu_check.py end to end at the toy size on the CPU, so that a bug in it never costs GPU time.

The script builds a random Karlo and a random Kandinsky 2.2 in their hub layouts, loads them through `dalle_cli.load`,
times every configuration it can run here, runs diffusers' UnCLIPPipeline and KandinskyV22CombinedPipeline in
subprocesses on the same folders, and writes a table and a JSON. The test checks that every figure the GPU run will
report is really there and sensible, not just that it exited 0.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import kandinsky_random  # noqa: E402
from karlo_random import KARLO, NETWORKS, build_network, flops_per_image  # noqa: E402

# Both sides run in fp32 on the CPU, so they differ by float32 rounding only: test_pipeline holds the same
# pipelines on a toy model to the same bound, and this run measures about 7e-6 (pixels in [0, 1]).
FP32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """(gpu_check.json's object, the --out folder, the --work folder) of one `--small --device cpu` run."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    out, work = tmp / "out", tmp / "work"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--small", "--device", "cpu", "--out", str(out),
         "--work", str(work)], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), out, work


def _section(report: dict, model: str) -> dict:
    assert [s["model"] for s in report["sections"]] == ["karlo", "kandinsky"]
    [section] = [s for s in report["sections"] if s["model"] == model]
    assert "error" not in section
    return section


def _rows(report: dict, model: str = "karlo") -> list[dict]:
    return _section(report, model)["rows"]


def test_dalle_rows_measured_in_fp32(report) -> None:
    data, _, _ = report
    ok = {(r["low_vram"], r["batch"]): r for r in _rows(data) if r["impl"] == "dalle" and r["status"] == "ok"}
    assert set(ok) == {(False, 1), (False, 2), (True, 1), (True, 2)}
    for row in ok.values():
        assert row["dtype"] == "fp32" and row["images"] == 2
        assert row["load_s"] > 0 and row["sample_s_per_image"] > 0 and row["tflops"] > 0
        # The CPU has no resettable peak: the memory figures are absent, not made up, and so is the H200 fraction.
        assert row["load_peak_bytes"] is None and row["sample_peak_bytes"] is None
        assert row["fraction_of_h200_bf16"] is None


def test_cuda_rows_are_skipped_with_the_reason(report) -> None:
    data, _, _ = report
    skipped = [r for r in _rows(data) if r["status"] == "skipped"]
    assert {(r["dtype"], r["low_vram"], r["batch"]) for r in skipped} == {
        ("fp16", False, 1), ("fp16", False, 2), ("fp16", True, 1), ("fp16", True, 2), ("bf16", False, 2)}
    for row in skipped:
        assert "CUDA" in row["reason"] and "sample_s_per_image" not in row


def test_reference_row_and_agreement(report) -> None:
    data, _, _ = report
    [ref] = [r for r in _rows(data) if r["impl"] == "diffusers"]
    assert ref["status"] == "ok" and ref["dtype"] == "fp32" and ref["batch"] == 2
    assert ref["load_s"] > 0 and ref["sample_s_per_image"] > 0 and ref["tflops"] > 0
    assert ref["versions"]["diffusers"] == "0.42.1"
    f = _section(data, "karlo")["figures"]
    assert f["image_shape"] == [2, 32, 32, 3]
    # Saturated images would agree trivially: the damped random model keeps nearly every pixel off the clip.
    assert f["informative_fraction_diffusers"] > 0.9 and f["informative_fraction_dalle"] > 0.9
    assert f["nonfinite_pixels"] == {"dalle": 0, "diffusers": 0}
    assert f["max_abs_delta_vs_diffusers"] <= FP32_TOLERANCE
    assert f["max_abs_delta_batch_1_vs_batch_n"] <= FP32_TOLERANCE
    assert f["max_abs_delta_low_vram_vs_normal"] == 0.0  # the same computation on the same device
    assert f["max_abs_delta_bf16_vs_fp16"] is None
    assert f["settings"] == {"prior_steps": 3, "decoder_steps": 3, "sr_steps": 2, "prior_guidance": 4.0,
                             "decoder_guidance": 8.0, "prior_candidates": 1}


def test_flops_and_weights(report) -> None:
    data, _, work = report
    f = _section(data, "karlo")["figures"]
    assert set(f["flops_per_image_by_network"]) == set(NETWORKS)
    assert all(v > 0 for v in f["flops_per_image_by_network"].values())
    assert f["flops_per_image"] == pytest.approx(sum(f["flops_per_image_by_network"].values()))
    folder = Path(f["weights"]["folder"])
    assert folder.parent == work
    for name, (_, _, weights) in NETWORKS.items():
        assert (folder / name / weights).is_file() and (folder / name / "config.json").is_file()
    assert f["weights"]["bytes"] > 0 and f["weights"]["parameters"] > 0


def test_table_written(report) -> None:
    data, out, _ = report
    table = (out / "gpu_check.md").read_text()
    for model, count in (("karlo", 10), ("kandinsky", 8)):
        lines = [line for line in table.splitlines() if line.startswith(f"| {model} |")]
        assert len(lines) == len(_rows(data, model)) == count
        assert any("| diffusers | fp32 |" in line for line in lines)
    assert table.count("max |Δ| dalle vs diffusers") == 2 and "low-VRAM first-call peak" in table


def test_full_size_flop_count_matches_the_prior_size() -> None:
    """At Karlo's real size (meta tensors, free), the prior's count is 2 FLOPs per weight per token: the counter
    sees every matmul. 81 tokens (77 text + 4 extra), 2 rows under guidance, 25 steps."""
    import torch

    flops = flops_per_image(KARLO, 25, 25, 7)
    with torch.device("meta"):
        prior = build_network("prior", json.loads((KARLO / "prior" / "config.json").read_text()))
    weights = sum(m.weight.numel() for m in prior.modules() if isinstance(m, torch.nn.Linear))
    assert flops["prior"] == pytest.approx(2 * weights * 81 * 2 * 25, rel=0.02)
    assert 90e12 < sum(flops.values()) < 110e12  # about 98 TFLOPs an image, most of it super-resolution


KANDINSKY_NETWORKS = {"text_encoder", "prior", "unet", "movq"}  # per image; the image encoder runs once per checkpoint


def test_kandinsky_dalle_rows_and_skipped_cuda_rows(report) -> None:
    data, _, _ = report
    rows = _rows(data, "kandinsky")
    ok = {(r["low_vram"], r["batch"]): r for r in rows if r["impl"] == "dalle" and r["status"] == "ok"}
    assert set(ok) == {(False, 1), (False, 2), (True, 2)}  # low-VRAM at full batch only
    for row in ok.values():
        assert row["dtype"] == "fp32" and row["images"] == 2
        assert row["load_s"] > 0 and row["warmup_s"] > 0 and row["sample_s_per_image"] > 0 and row["tflops"] > 0
        assert row["load_peak_bytes"] is None and row["sample_peak_bytes"] is None
        assert row["fraction_of_h200_bf16"] is None
        # Each load started with a cold cache: the warm-up loaded the image encoder and cached the zero embedding.
        assert row["image_encoder_loaded"] and row["zero_embed_cached"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert {(r["dtype"], r["low_vram"], r["batch"]) for r in skipped} == {
        ("fp16", False, 1), ("fp16", False, 2), ("fp16", True, 2), ("bf16", False, 2)}
    assert all("CUDA" in r["reason"] and "sample_s_per_image" not in r for r in skipped)
    assert [r["dtype"] for r in rows][-1] == "bf16"  # bf16 comes after the reference, the first to go if time is short


def test_kandinsky_reference_row_and_agreement(report) -> None:
    data, _, _ = report
    section = _section(data, "kandinsky")
    [ref] = [r for r in section["rows"] if r["impl"] == "diffusers"]
    assert ref["status"] == "ok" and ref["dtype"] == "fp32" and ref["batch"] == 2
    assert ref["load_s"] > 0 and ref["sample_s_per_image"] > 0 and ref["tflops"] > 0
    assert ref["versions"]["diffusers"] == "0.42.1"
    f = section["figures"]
    assert f["image_shape"] == [2, 64, 64, 3]
    assert f["settings"] == {"prior_steps": 3, "decoder_steps": 3, "prior_guidance": 4.0, "decoder_guidance": 4.0,
                             "width": 64, "height": 64, "negative_prompt": "", "prior_candidates": 1}
    assert f["informative_fraction_diffusers"] > 0.9 and f["informative_fraction_dalle"] > 0.9
    assert f["nonfinite_pixels"] == {"dalle": 0, "diffusers": 0}
    assert f["max_abs_delta_vs_diffusers"] <= FP32_TOLERANCE
    assert f["max_abs_delta_batch_1_vs_batch_n"] <= FP32_TOLERANCE
    assert f["max_abs_delta_low_vram_vs_normal"] == 0.0
    assert f["max_abs_delta_bf16_vs_fp16"] is None and f["low_vram_peak_bytes"] is None
    assert f["low_vram_warmup_peak_bytes"] is None and f["zero_embed_cache"] == "cold at every load"
    assert set(f["low_vram_stage_bytes"]) == {"text_encoder+prior", "image_encoder", "unet", "movq"}
    assert set(f["flops_per_image_by_network"]) == KANDINSKY_NETWORKS
    assert all(v > 0 for v in f["flops_per_image_by_network"].values())


def test_kandinsky_folders_have_the_hub_layouts(report) -> None:
    data, _, work = report
    root = Path(_section(data, "kandinsky")["figures"]["weights"]["folder"])
    assert root.parent == work
    prior, decoder = kandinsky_random.folders(root)
    for folder, reference in ((prior, kandinsky_random.PRIOR), (decoder, kandinsky_random.DECODER)):
        index = (folder / "model_index.json").read_text()
        assert index == (reference / "model_index.json").read_text()
        parts = {k for k in json.loads(index) if not k.startswith("_")}
        assert {p.name for p in folder.iterdir()} == parts | {"model_index.json"}
    for name, (role, weights) in kandinsky_random.NETWORKS.items():
        assert (root / role / name / weights).is_file() and (root / role / name / "config.json").is_file()
    assert json.loads((prior / "scheduler" / "scheduler_config.json").read_text())["clip_sample_range"] == 10.0
    scheduler = json.loads((decoder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "sample" and scheduler["clip_sample"] is False
    assert scheduler["steps_offset"] == 1 and scheduler["beta_end"] == 0.012
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        assert json.loads((prior / "tokenizer" / name).read_text())["pad_token"] == "<|endoftext|>"


def test_kandinsky_full_size_needs_no_diffusers_and_counts_its_flops(tmp_path: Path) -> None:
    """The GPU machine has no diffusers: the script's modules and the full-size Kandinsky 2.2 configs and FLOP count
    must not import it (or transformers). At 512×512 (meta tensors, free) the prior's count is 2 FLOPs per weight per
    token, as Karlo's, and the UNet's 100 steps are most of about 182 TFLOPs an image."""
    import torch

    code = f"""
import json, sys
from pathlib import Path
sys.path[:0] = [{str(ROOT / "benchmarks")!r}, {str(ROOT)!r}]
import gpu_check, kandinsky_random as k
root = Path({str(tmp_path)!r})
for name, (role, _) in k.NETWORKS.items():
    k.write_json(root / role / name / "config.json", k.network_config(name, False))
flops = k.flops_per_image(root, 25, 100, 512, 512)
imported = [m for m in sys.modules if m.split(".")[0] in ("diffusers", "transformers")]
print(json.dumps({{"flops": flops, "imported": imported}}))
"""
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["imported"] == []
    flops = result["flops"]
    assert set(flops) == KANDINSKY_NETWORKS
    with torch.device("meta"):
        prior = kandinsky_random.build_network("prior", kandinsky_random.network_config("prior", False))
    weights = sum(m.weight.numel() for m in prior.modules() if isinstance(m, torch.nn.Linear))
    assert flops["prior"] == pytest.approx(2 * weights * 81 * 2 * 25, rel=0.02)
    assert 170e12 < sum(flops.values()) < 195e12 and flops["unet"] > 0.9 * sum(flops.values())
