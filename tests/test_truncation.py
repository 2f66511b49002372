"""Truncated loading (dfbench/backbones/truncation.py): which blocks a selection needs, worked by hand; a truncated
tiny FLUX from a sharded folder gives the full load's features bit for bit, holds exactly the parameters of the
blocks it needs, and never opens a shard of left-out blocks (they are deleted before it loads)."""

import json

import pytest
import torch

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.truncation import INDEX_NAME, blocks_to_keep
from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.resolve import resolve_features

FLUX_STACKS = {"transformer_blocks": 19, "single_transformer_blocks": 38}
SELECTION = ["single_transformer_blocks.9", "single_transformer_blocks.9.mod.scale", "transformer_blocks.4.attn.q"]
SETTINGS = ExtractSettings(resolution=64, timestep=300, seed=2)


def test_blocks_to_keep_by_hand():
    # a double block: that many doubles, no singles (they run after every double)
    assert blocks_to_keep(["transformer_blocks.3"], FLUX_STACKS) == {"transformer_blocks": 4,
                                                                     "single_transformer_blocks": 0}
    # DiTF's single block 9 (and any earlier names): all 19 doubles, singles 0 … 9
    assert blocks_to_keep(SELECTION, FLUX_STACKS) == {"transformer_blocks": 19, "single_transformer_blocks": 10}
    # negative indices count from the end: -1 is block 37, so nothing is left out
    assert blocks_to_keep(["single_transformer_blocks.-1"], FLUX_STACKS) == FLUX_STACKS
    assert blocks_to_keep(["blocks.7.attn1.q"], {"blocks": 40}) == {"blocks": 8}
    # a name outside the stacks: load everything
    assert blocks_to_keep(["transformer_blocks.2", "norm_out"], FLUX_STACKS) is None


@pytest.fixture(scope="module")
def sharded_flux(tmp_path_factory):
    """tiny-flux saved with its transformer in shards of ≤ 60 kB (an index and dozens of files, as a hub download)."""
    backbone = create_backbone("tiny-flux")
    folder = tmp_path_factory.mktemp("flux")
    backbone.save_pretrained(folder)
    backbone.denoiser.save_pretrained(folder / "transformer", max_shard_size="60KB")
    return backbone, folder


def test_a_truncated_load_equals_the_full_one_and_skips_unneeded_shards(sharded_flux):
    backbone, folder = sharded_flux
    index = json.loads((folder / "transformer" / INDEX_NAME).read_text())["weight_map"]
    shards: dict[str, set[str]] = {}
    for tensor, shard in index.items():
        shards.setdefault(shard, set()).add(tensor)

    def left_out(tensor: str) -> bool:
        parts = tensor.split(".")
        return parts[0] == "single_transformer_blocks" and int(parts[1]) >= 10

    unneeded = [shard for shard, tensors in shards.items() if all(left_out(tensor) for tensor in tensors)]
    assert len(unneeded) >= 3
    for shard in unneeded:                    # never opened: a load that reads them fails
        (folder / "transformer" / shard).unlink()

    truncated = resolve_features("flux-dev", selection=SELECTION, weights=str(folder), device="cpu", truncate=True)
    model = truncated.backbone
    assert model.truncated_after == "single_transformer_blocks.9"
    kept = sum(parameter.numel() for name, parameter in backbone.denoiser.named_parameters()
               if not left_out(name))
    assert sum(parameter.numel() for parameter in model.denoiser.parameters()) == kept
    expected = backbone.extract(torch.zeros(2, 3, 64, 64), SELECTION, SETTINGS)
    features = model.extract(torch.zeros(2, 3, 64, 64), truncated.selection, SETTINGS)
    for name in SELECTION:
        assert torch.equal(features[name], expected[name])
    with pytest.raises(DfbenchInputError, match="single_transformer_blocks.10 was not loaded"):
        model.extract(torch.zeros(1, 3, 64, 64), ["single_transformer_blocks.12"], SETTINGS)


def test_a_folder_missing_needed_tensors_is_one_line(sharded_flux, tmp_path):
    _, folder = sharded_flux
    broken = tmp_path / "broken"
    broken.mkdir()
    for part in ("vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        (broken / part).symlink_to(folder / part)
    (broken / "transformer").mkdir()
    for item in (folder / "transformer").iterdir():
        if item.name != INDEX_NAME:
            (broken / "transformer" / item.name).symlink_to(item)
    index = json.loads((folder / "transformer" / INDEX_NAME).read_text())
    del index["weight_map"]["transformer_blocks.0.attn.to_q.weight"]      # an index that lacks a needed tensor
    (broken / "transformer" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(DfbenchInputError, match="lack .* tensors of the blocks to load"):
        resolve_features("flux-dev", selection=SELECTION, weights=str(broken), device="cpu", truncate=True)


def test_extract_truncate_on_the_command_line(sharded_flux, tmp_path):
    from safetensors.torch import load_file

    backbone, folder = sharded_flux
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 140, 200)).save(image)
    out = tmp_path / "features.safetensors"
    assert main(["extract", "flux-dev", "--weights", str(folder), "--truncate", "--device", "cpu",
                 "--select", "transformer_blocks.2", "--images", str(image), "--out", str(out),
                 "--resolution", "64"]) == 0
    expected = backbone.extract([Image.open(image)], ["transformer_blocks.2"], ExtractSettings(resolution=64))
    torch.testing.assert_close(load_file(out)["transformer_blocks.2"], expected["transformer_blocks.2"])


def test_a_cpu_bfloat16_backbone_keeps_its_vae_in_float32(photos):
    """On a CPU the VAE stays float32 under a bfloat16 denoiser (bfloat16 convolutions take a slow path there: the
    one encode of a truncated FLUX at 512 px would take longer than its transformer); the latents reach the
    denoiser in its dtype."""
    backbone = create_backbone("tiny-flux", torch_dtype="bfloat16", device="cpu")
    assert next(backbone.vae.parameters()).dtype == torch.float32
    assert backbone.dtype == torch.bfloat16
    features = backbone.extract(photos[:1], ["transformer_blocks.1"], ExtractSettings(resolution=64, dtype="bfloat16"))
    assert features["transformer_blocks.1"].shape == (1, 16, 4, 4)
