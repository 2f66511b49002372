"""``dfbench perf truncation``: peak RSS and seconds per image of a DiT loaded truncated (``--truncate``) from a
full-size random-weight folder written as a hub download is laid out (a sharded safetensors transformer with its
index, the VAE, the scheduler, the text encoders' configs and tokenizers).

The folder is written shard by shard (a 12 B-value model never fits in this machine's RAM at once): the denoiser is
built on the meta device from the bundled config and each shard's tensors are drawn (normal, σ 0.02, seeded by the
tensor's name), written and freed before the next. The measurement runs in a fresh child process, so its peak RSS
(VmHWM) is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARD_BYTES = 5 * 1024**3
COMPLETE = "dfbench-random-weights.json"


def write_random_folder(name: str, folder: Path, dtype: str = "bfloat16", log: Callable[[str], None] = print
                        ) -> dict[str, Any]:
    """Write ``name``'s full-size random weights to ``folder`` (reused when already complete); its summary."""
    import diffusers
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    from dfbench.backbones.parts import TORCH_DTYPES, byte_level_clip_tokenizer
    from dfbench.backbones.tiny import parameter_seed
    from dfbench.registry import BACKBONES

    marker = folder / COMPLETE
    if marker.is_file():
        return json.loads(marker.read_text())
    backbone = BACKBONES.get(name)(init="meta")          # the bundled configs, on the meta device
    torch_dtype = TORCH_DTYPES[dtype]
    subfolder, class_name = backbone.DENOISER
    model_class = getattr(diffusers, class_name)
    with init_empty_weights():
        model = model_class.from_config(backbone.denoiser.config)
    target = folder / subfolder
    target.mkdir(parents=True, exist_ok=True)
    model.save_config(target)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    element = torch.empty(0, dtype=torch_dtype).element_size()
    for tensor_name, tensor in model.state_dict().items():
        nbytes = tensor.numel() * element
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((tensor_name, tuple(tensor.shape)))
        size += nbytes
    weight_map, total = {}, 0
    for number, shard in enumerate(shards, start=1):
        file_name = f"diffusion_pytorch_model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for tensor_name, shape in shard:
            generator = torch.Generator().manual_seed(parameter_seed(0, f"{name}/{tensor_name}"))
            tensors[tensor_name] = (torch.randn(shape, generator=generator) * 0.02).to(torch_dtype)
            weight_map[tensor_name] = file_name
            total += tensors[tensor_name].numel() * element
        save_file(tensors, str(target / file_name))
        log(f"{subfolder}: shard {number}/{len(shards)} written ({total / 1e9:.1f} GB so far)")
        del tensors
    (target / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    diffusers.AutoencoderKL.from_config(backbone.vae.config).to(torch_dtype).save_pretrained(folder / "vae")
    backbone.scheduler.save_pretrained(folder / "scheduler")
    for (model_folder, tokenizer_folder, _), encoder in zip(backbone.TEXT.COMPONENTS, backbone.text_encoders,
                                                             strict=True):
        encoder.config.save_pretrained(folder / model_folder)       # configs only: --text-encoders none
        byte_level_clip_tokenizer().save_pretrained(folder / tokenizer_folder)
    summary = {"backbone": name, "dtype": dtype, "denoiser_bytes": total, "shards": len(shards)}
    marker.write_text(json.dumps(summary))
    return summary


def measure(name: str, folder: str, selection: list[str], settings: dict[str, Any], truncate: bool) -> dict[str, Any]:
    """In this process: load ``name`` from ``folder`` (truncated or not) and extract one image; the figures."""
    import torch

    from dfbench.perf.common import machine_description, perf_image, vm_hwm_gib
    from dfbench.resolve import resolve_features

    started = time.perf_counter()
    features = resolve_features(name, selection=selection, settings=settings, weights=folder, device="cpu",
                                truncate=truncate)
    built = time.perf_counter() - started
    backbone: Any = features.backbone          # a DiffusionBackbone: its denoiser and truncation are read
    loaded_rss = vm_hwm_gib()
    print(f"loaded in {built:.1f} s, peak RSS {loaded_rss:.2f} GiB", file=sys.stderr, flush=True)
    start = time.perf_counter()
    backbone.extract([perf_image()], features.selection, features.settings)
    seconds = time.perf_counter() - start
    return {"backbone": name, "selection": features.selection, "truncate": truncate,
            "truncated_after": backbone.truncated_after, "resolution": features.resolution,
            "dtype": features.settings.dtype, "text_encoders": features.settings.text_encoders,
            "denoiser_values_billions": round(sum(p.numel() for p in backbone.denoiser.parameters()) / 1e9, 2),
            "load_s": round(built, 1), "peak_rss_after_load_gib": loaded_rss, "s_per_image": round(seconds, 1),
            "peak_rss_gib": vm_hwm_gib(), "machine": machine_description(torch.device("cpu"))}


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf truncation``: --backbone (default flux-dev), --select (default single_transformer_blocks.9),
    --resolution (512), --dtype (bfloat16), --text-encoders (none), --weights-dir (where the random folder is
    written; default $DFBENCH_HOME/perf/<backbone>-random)."""
    from dfbench.home import dfbench_home

    name = (args.backbone or ["flux-dev"])[0]
    dtype = args.dtype or "bfloat16"
    folder = Path(args.weights_dir) if args.weights_dir else dfbench_home() / "perf" / f"{name}-random-{dtype}"
    started = time.perf_counter()
    written = write_random_folder(name, folder, dtype, log)
    log(f"{folder}: ready ({written['denoiser_bytes'] / 1e9:.1f} GB denoiser, {time.perf_counter() - started:.0f} s)")
    settings = {"resolution": args.resolution or 512, "dtype": dtype, "text_encoders": args.text_encoders or "none"}
    selection = args.select or ["single_transformer_blocks.9"]
    done = subprocess.run([sys.executable, "-m", "dfbench.perf.truncation", name, str(folder), ",".join(selection),
                           json.dumps(settings)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"perf truncation {name} failed: {done.stderr.strip()[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["full_denoiser_gb"] = round(written["denoiser_bytes"] / 1e9, 2)
    return row


if __name__ == "__main__":
    name, folder, selection, settings = sys.argv[1:5]
    print(json.dumps(measure(name, folder, selection.split(","), json.loads(settings), truncate=True)))
