"""Tiny backbones' weights come from the backbone's seed and each parameter's name alone: the
CI baseline must not move when diffusers or transformers change how or in which order they initialise."""

import hashlib

import pytest
import torch

from dfbench.backbones.tiny import name_seeded_init
from dfbench.registry import create_backbone


def drawn(seed, name, shape, bound):
    """The rule, written out again: SHA-256 of "<seed>:<name>" → generator → uniform(±bound)."""
    generator_seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)
    return (torch.rand(shape, generator=torch.Generator().manual_seed(generator_seed)) * 2 - 1) * bound


def test_pinned_values():
    """Literal values: a change of the rule (or of a parameter's name) shows here first."""
    sd15, sdxl = create_backbone("tiny-sd15"), create_backbone("tiny-sdxl")
    assert float(sd15.unet.conv_in.weight[0, 0, 0, 0]) == pytest.approx(-0.08213289827108383, abs=1e-7)
    assert float(sd15.unet.up_blocks[1].resnets[0].conv1.bias[3]) == pytest.approx(0.0029153255745768547, abs=1e-7)
    assert float(sdxl.unet.conv_in.weight[0, 0, 0, 0]) == pytest.approx(-0.16274327039718628, abs=1e-7)
    assert float(create_backbone("tiny-sd15", seed=1).unet.conv_in.weight[0, 0, 0, 0]) != pytest.approx(
        -0.08213289827108383)


def test_each_parameter_follows_the_rule_by_kind():
    sd15 = create_backbone("tiny-sd15")
    conv_in = sd15.unet.conv_in                                   # Conv2d 4 → 32, 3×3: fan_in 36
    torch.testing.assert_close(conv_in.weight, drawn(0, "tiny-sd15/unet.conv_in.weight", conv_in.weight.shape,
                                                     1 / 36**0.5))
    torch.testing.assert_close(conv_in.bias, drawn(0, "tiny-sd15/unet.conv_in.bias", conv_in.bias.shape, 1 / 36**0.5))
    norm = sd15.unet.conv_norm_out                                # GroupNorm: weight 1, bias 0
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    embedding = dict(sd15.text_encoders[0].named_parameters())
    key = next(name for name in embedding if name.endswith("token_embedding.weight"))
    seed = int.from_bytes(hashlib.sha256(f"0:tiny-sd15/text_encoder_0.{key}".encode()).digest()[:8],
                          "little") & (2**63 - 1)
    expected = torch.randn(embedding[key].shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    torch.testing.assert_close(embedding[key], expected)


def test_library_initialisation_order_does_not_matter():
    """Whatever a module held before (another library's init, another global seed), the result is the same."""
    reference = create_backbone("tiny-sd15").unet.state_dict()
    from diffusers import UNet2DConditionModel

    from dfbench.backbones.tiny import tiny_sd15_configs

    torch.manual_seed(12345)
    other = UNet2DConditionModel.from_config(tiny_sd15_configs()["unet"])
    for parameter in other.parameters():                       # as if a library drew them in another order
        torch.nn.init.normal_(parameter)
    name_seeded_init(other, 0, "tiny-sd15/unet")
    for name, value in other.state_dict().items():
        torch.testing.assert_close(value, reference[name], msg=name)
