"""Bad checkpoints: each gets one clear DalleError naming the component and what is wrong."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dalle_cli.checkpoint import load_weights
from dalle_cli.configs import from_config
from dalle_cli.errors import CheckpointError, ConfigError
from dalle_cli.families.unclip.components import load_components
from dalle_cli.models.text_proj import TextProjConfig

CPU = torch.device("cpu")


class Tiny(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)


def _save_tiny(folder: Path, width: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in Tiny(width).state_dict().items()}, str(folder / "model.safetensors"))


def test_loads_in_the_requested_dtype(tmp_path: Path) -> None:
    _save_tiny(tmp_path / "part")
    module = load_weights(Tiny, tmp_path / "part", "part", torch.float16, CPU)
    assert module.proj.weight.dtype == torch.float16 and not module.proj.weight.requires_grad
    assert not module.training


def test_sharded_weights_follow_the_index(tmp_path: Path) -> None:
    folder = tmp_path / "part"
    folder.mkdir()
    state = Tiny().state_dict()
    save_file({"proj.weight": state["proj.weight"]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"proj.bias": state["proj.bias"]}, str(folder / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"proj.weight": "model-00001-of-00002.safetensors",
                            "proj.bias": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    module = load_weights(Tiny, folder, "part", torch.float32, CPU)
    assert torch.equal(module.proj.bias, state["proj.bias"])


def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "decoder"
    folder.mkdir()
    torch.save(Tiny().state_dict(), folder / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"decoder: .* only pickle weights \(diffusion_pytorch_model.bin\)"):
        load_weights(Tiny, folder, "decoder", torch.float32, CPU)


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    _save_tiny(tmp_path / "prior", width=64)
    path = tmp_path / "prior" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="prior: model.safetensors is not a readable safetensors file"):
        load_weights(lambda: Tiny(64), tmp_path / "prior", "prior", torch.float32, CPU)


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    _save_tiny(tmp_path / "text_proj", width=4)
    with pytest.raises(CheckpointError, match=r"text_proj: tensor proj.weight has shape \(4, 4\) in the checkpoint "
                                              r"but \(8, 8\) from the config"):
        load_weights(lambda: Tiny(8), tmp_path / "text_proj", "text_proj", torch.float32, CPU)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "decoder"
    folder.mkdir()
    save_file({"proj.weight": torch.zeros(4, 4), "extra.weight": torch.zeros(1)}, str(folder / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"decoder: .*1 missing \(first: proj.bias\); 1 unexpected "
                                              r"\(first: extra.weight\)"):
        load_weights(Tiny, folder, "decoder", torch.float32, CPU)


def test_config_values_follow_the_shared_rules() -> None:
    raw = {"_class_name": "UnCLIPTextProjModel", "_diffusers_version": "0.11.0.dev0", "clip_embeddings_dim": 32,
           "not_a_field": 1, "clip_extra_context_tokens": None, "time_embed_dim": 64, "cross_attention_dim": 48}
    config = from_config(TextProjConfig, raw)
    assert (config.clip_embeddings_dim, config.time_embed_dim, config.cross_attention_dim) == (32, 64, 48)
    assert config.clip_extra_context_tokens == 4  # null on a field that cannot be None keeps the reference default
    with pytest.raises(ConfigError, match="required key 'time_embed_dim'"):
        from_config(TextProjConfig, {"cross_attention_dim": 48})


@pytest.fixture()
def karlo_copy(tiny_karlo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_karlo, tmp_path / "karlo"))


def test_missing_component_folder(karlo_copy: Path) -> None:
    shutil.rmtree(karlo_copy / "super_res_last")
    with pytest.raises(CheckpointError, match="component 'super_res_last' is missing"):
        load_components(karlo_copy, torch.float32, CPU)


def test_unknown_block_type(karlo_copy: Path) -> None:
    config_path = karlo_copy / "decoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["down_block_types"][1] = "CrossAttnDownBlock2D"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="CrossAttnDownBlock2D"):
        load_components(karlo_copy, torch.float32, CPU)


def test_pickle_only_component_in_a_model(karlo_copy: Path) -> None:
    for f in (karlo_copy / "prior").glob("*.safetensors"):
        f.unlink()
    torch.save({}, karlo_copy / "prior" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="prior: .* only pickle weights"):
        load_components(karlo_copy, torch.float32, CPU)
