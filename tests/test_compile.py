"""--compile: compiled and eager features agree on the CPU (inductor), only the unhooked blocks are compiled, and
the setting stays out of the cache key and the run identity (dfbench/backbones/compiled.py)."""

import pytest
import torch

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.compiled import top_level_blocks
from dfbench.cache import FeatureCache


@pytest.mark.slow
def test_compiled_and_eager_features_agree(photos):
    """tiny-sd15, down_blocks.2 at 64 px: conv_in, time_embedding, down_blocks.0 and down_blocks.1 are compiled
    (the pass runs through them before the hook), down_blocks.2 and what follows stay eager; the features equal
    the eager backbone's within 1e-4 relative."""
    eager, compiled = create_backbone("tiny-sd15"), create_backbone("tiny-sd15")
    settings = ExtractSettings(resolution=64, timestep=100, seed=1)
    expected = eager.extract(photos[:2], ["down_blocks.2"], settings)["down_blocks.2"]
    got = compiled.extract(photos[:2], ["down_blocks.2"], settings.replace(compile=True))["down_blocks.2"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert compiled.compiled_blocks == {"conv_in", "time_embedding", "down_blocks.0", "down_blocks.1", "vae.encoder"}
    assert [path for path, _ in top_level_blocks(compiled.denoiser)][:5] == [
        "conv_in", "time_proj", "time_embedding", "down_blocks.0", "down_blocks.1"]


def test_compile_is_a_speed_setting_outside_keys_and_identities(tmp_path):
    backbone = create_backbone("tiny-sd15")
    plain, fast = ExtractSettings(resolution=64), ExtractSettings(resolution=64, compile=True)
    assert FeatureCache.config_for(backbone, plain, "float16") == FeatureCache.config_for(backbone, fast, "float16")
    assert "compile" not in plain.value_dict() and fast.value_dict()["compile"] is True
    from dfbench.results import Result

    record = Result(task="spair", protocol="spair/dift-nn", protocol_version=1, backbone="tiny-sd15",
                    selection=["up_blocks.1"], settings=fast.value_dict(), metrics={})
    other = Result(task="spair", protocol="spair/dift-nn", protocol_version=1, backbone="tiny-sd15",
                   selection=["up_blocks.1"], settings={**plain.value_dict(), "batch_size": 3}, metrics={})
    assert record.identity_hash == other.identity_hash
