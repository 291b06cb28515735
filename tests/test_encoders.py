"""Tests of the frozen encoders: Wan2.1 VAE wrapper, Reason1 text embedder, weight fingerprints.

Everything runs on CPU with tiny random configurations (no weights are downloaded).
"""

from __future__ import annotations

import pytest
import torch
from helpers import fingerprint_module

from cosmos_composer.checkpoint.integrity import digests_of, write_checksums
from cosmos_composer.encoders.text import (
    EMPTY_PROMPT,
    NUM_TEXT_TOKENS,
    SYSTEM_PROMPT,
    Reason1TextEmbedder,
    build_tiny_tokenizer,
    tiny_qwen2_5_vl_config,
)
from cosmos_composer.encoders.vae import (
    LATENTS_MEAN,
    LATENTS_STD,
    TINY_VAE_CONFIG,
    WAN21_VAE_CONFIG,
    WanVAE,
    diffusers_to_official_key_map,
    latent_num_frames,
    official_to_diffusers_key_map,
    pixel_num_frames,
)
from cosmos_composer.fingerprint import fingerprint_tensors

# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae() -> WanVAE:
    return WanVAE.tiny(seed=0)


@pytest.fixture(scope="module")
def clip_uint8() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (1, 3, 5, 32, 32), dtype=torch.uint8, generator=generator)


def _stats() -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(LATENTS_STD).view(1, 16, 1, 1, 1)
    return mean, std


def test_latent_statistics_match_diffusers_wan_defaults():
    import inspect

    from diffusers import AutoencoderKLWan

    parameters = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert tuple(parameters["latents_mean"].default) == LATENTS_MEAN
    assert tuple(parameters["latents_std"].default) == LATENTS_STD
    assert len(LATENTS_MEAN) == len(LATENTS_STD) == 16


def test_frame_count_rule():
    assert latent_num_frames(29) == 8 and latent_num_frames(93) == 24 and latent_num_frames(5) == 2
    assert pixel_num_frames(8) == 29


def test_vae_round_trip_with_official_normalisation(tiny_vae, clip_uint8):
    latent = tiny_vae.encode(clip_uint8)
    assert latent.shape == (1, 16, 2, 4, 4) and latent.dtype == torch.float32

    # Independent computation straight from diffusers.
    mean, std = _stats()
    x = clip_uint8.float() / 127.5 - 1.0
    with torch.no_grad():
        mu = tiny_vae.vae.encode(x).latent_dist.mean
        expected_latent = (mu - mean) / std
    torch.testing.assert_close(latent, expected_latent, rtol=1e-5, atol=1e-6)

    # Float input in [-1, 1] gives the same latent as uint8 input.
    torch.testing.assert_close(tiny_vae.encode(x), latent)

    # decode(encode(x)) == diffusers decode(mu): the normalisation is inverted exactly.
    video = tiny_vae.decode(latent)
    with torch.no_grad():
        expected_video = tiny_vae.vae.decode(mu).sample
    assert video.shape == (1, 3, 5, 32, 32) and video.dtype == torch.float32
    torch.testing.assert_close(video, expected_video, rtol=1e-5, atol=1e-5)
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert (video.abs() < 1.0).float().mean() > 0.5  # not trivially saturated


def test_vae_views_are_encoded_independently(tiny_vae, clip_uint8):
    second_view = torch.flip(clip_uint8, dims=[-1])
    two_views = torch.cat([clip_uint8, second_view], dim=2)  # [1, 3, 2*5, 32, 32]
    latent = tiny_vae.encode_views(two_views, num_views=2)
    assert latent.shape == (1, 16, 4, 4, 4)
    torch.testing.assert_close(latent[:, :, :2], tiny_vae.encode(clip_uint8))
    torch.testing.assert_close(latent[:, :, 2:], tiny_vae.encode(second_view))
    all_views_at_once = WanVAE(tiny_vae.vae, micro_batch_size=None).encode_views(two_views, num_views=2)
    torch.testing.assert_close(all_views_at_once, latent, rtol=1e-5, atol=1e-5)
    assert tiny_vae.decode_views(latent, num_views=2).shape == (1, 3, 10, 32, 32)


def test_vae_rejects_bad_inputs(tiny_vae):
    with pytest.raises(ValueError, match="T = 1 \\+ 4k"):
        tiny_vae.encode(torch.zeros(1, 3, 4, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_vae.encode(torch.zeros(1, 3, 5, 30, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tiny_vae.encode(torch.full((1, 3, 1, 8, 8), 255.0))


def test_key_mapping_matches_diffusers_single_file_converter():
    """Our official->diffusers mapping agrees with diffusers' own Wan VAE converter (full size)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        diffusers_keys = list(AutoencoderKLWan(**WAN21_VAE_CONFIG).state_dict())
    official_keys = list(diffusers_to_official_key_map(diffusers_keys).values())
    mapping, unmapped = official_to_diffusers_key_map(official_keys)
    assert not unmapped and sorted(mapping.values()) == sorted(diffusers_keys)
    reference = convert_wan_vae_to_diffusers({key: key for key in official_keys})  # values = official names
    assert {official: diffusers for diffusers, official in reference.items()} == mapping
    # Spot checks of the documented official layout.
    assert mapping["decoder.upsamples.4.shortcut.weight"] == "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"
    assert mapping["decoder.upsamples.7.time_conv.bias"] == "decoder.up_blocks.1.upsamplers.0.time_conv.bias"
    assert mapping["decoder.upsamples.11.resample.1.weight"] == "decoder.up_blocks.2.upsamplers.0.resample.1.weight"
    assert mapping["encoder.downsamples.2.resample.1.weight"] == "encoder.down_blocks.2.resample.1.weight"
    assert mapping["conv1.weight"] == "quant_conv.weight" and mapping["conv2.bias"] == "post_quant_conv.bias"


def _official_state_dict(vae: WanVAE) -> dict[str, torch.Tensor]:
    state = vae.vae.state_dict()
    names = diffusers_to_official_key_map(list(state), TINY_VAE_CONFIG)
    return {names[key]: tensor.clone() for key, tensor in state.items()}


def test_official_tokenizer_pth_loads_with_identical_latents(tmp_path, tiny_vae, clip_uint8):
    path = tmp_path / "tokenizer.pth"
    torch.save(_official_state_dict(tiny_vae), path)
    loaded = WanVAE.from_official_pth(path, config=TINY_VAE_CONFIG)
    torch.testing.assert_close(loaded.encode(clip_uint8), tiny_vae.encode(clip_uint8), rtol=0, atol=0)


def test_official_tokenizer_pth_errors(tmp_path, tiny_vae):
    official = _official_state_dict(tiny_vae)

    wrong_shape = dict(official)
    wrong_shape["decoder.head.2.weight"] = torch.zeros(3, 4, 3, 3, 3)
    torch.save(wrong_shape, tmp_path / "wrong_shape.pth")
    with pytest.raises(ValueError, match=r"decoder\.head\.2\.weight.*\(3, 4, 3, 3, 3\)"):
        WanVAE.from_official_pth(tmp_path / "wrong_shape.pth", config=TINY_VAE_CONFIG)

    # The tiny file against the full-size config fails on a shape, naming the key.
    torch.save(official, tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="shape mismatch.*encoder"):
        WanVAE.from_official_pth(tmp_path / "tiny.pth")

    incomplete = dict(official)
    del incomplete["encoder.middle.1.to_qkv.weight"]
    incomplete["encoder.extra.weight"] = torch.zeros(1)
    torch.save(incomplete, tmp_path / "incomplete.pth")
    with pytest.raises(ValueError, match=r"(?s)missing keys.*encoder\.middle\.1\.to_qkv\.weight.*encoder\.extra"):
        WanVAE.from_official_pth(tmp_path / "incomplete.pth", config=TINY_VAE_CONFIG)

    pickled = dict(official)
    pickled["conv1.weight"] = _NotATensor()
    torch.save(pickled, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="refusing to load.*weights_only"):
        WanVAE.from_official_pth(tmp_path / "pickled.pth", config=TINY_VAE_CONFIG)

    with pytest.raises(FileNotFoundError, match="Cosmos-Predict2.5-2B"):
        WanVAE.from_official_pth(tmp_path / "absent.pth")


def test_official_tokenizer_pth_is_checked_against_its_checksums(tmp_path, tiny_vae, clip_uint8):
    """The VAE file is read by the checkpoint reader: a checksums.json beside it that lists it is verified."""
    official = _official_state_dict(tiny_vae)
    path = tmp_path / "tokenizer.pth"
    torch.save(official, path)
    write_checksums(tmp_path, digests_of(tmp_path, [path.name]))
    loaded = WanVAE.from_official_pth(path, config=TINY_VAE_CONFIG)
    torch.testing.assert_close(loaded.encode(clip_uint8), tiny_vae.encode(clip_uint8), rtol=0, atol=0)

    # Other weights of the same shapes (a file of the same size) no longer match the sha256 recorded for it.
    torch.save({key: tensor + 1 for key, tensor in official.items()}, path)
    with pytest.raises(ValueError, match=r"refusing to load .*tokenizer\.pth does not match the sha256"):
        WanVAE.from_official_pth(path, config=TINY_VAE_CONFIG)


class _NotATensor:
    """A pickled non-tensor object: weights_only loading must refuse it."""


def test_from_diffusers_folder(tmp_path, tiny_vae, clip_uint8):
    tiny_vae.vae.save_pretrained(tmp_path / "pipeline" / "vae")
    loaded = WanVAE.from_diffusers(tmp_path / "pipeline")  # finds vae/ by itself
    torch.testing.assert_close(loaded.encode(clip_uint8), tiny_vae.encode(clip_uint8), rtol=0, atol=0)


def test_vae_bf16_runs_and_returns_fp32(tiny_vae, clip_uint8):
    vae_bf16 = WanVAE(WanVAE.tiny(seed=0).vae, dtype=torch.bfloat16)
    latent = vae_bf16.encode(clip_uint8)
    assert latent.dtype == torch.float32
    assert (latent - tiny_vae.encode(clip_uint8)).abs().mean() < 0.05


# ---------------------------------------------------------------------------------------------
# Text embedder
# ---------------------------------------------------------------------------------------------

NUM_LAYERS, HIDDEN = 3, 32


@pytest.fixture(scope="module")
def tiny_full_model():
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen2_5_vl_config(len(tokenizer), NUM_LAYERS, HIDDEN)).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def embedder(tiny_full_model) -> Reason1TextEmbedder:
    model, tokenizer = tiny_full_model
    return Reason1TextEmbedder(model, tokenizer)


def test_chat_template_text(embedder):
    assert embedder.chat_text("the red car") == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nthe red car<|im_end|>\n"
    )


def test_text_embedding_shape_rule_and_normalisation(embedder):
    embeddings = embedder.embed(["the red car drives at night", "a person walks"])
    assert embedder.embed_dim == NUM_LAYERS * HIDDEN
    assert embeddings.shape == (2, NUM_TEXT_TOKENS, NUM_LAYERS * HIDDEN) and embeddings.dtype == torch.float32
    for layer_slice in embeddings.split(HIDDEN, dim=-1):
        torch.testing.assert_close(layer_slice.mean(-1), torch.zeros(2, NUM_TEXT_TOKENS), atol=1e-5, rtol=0)
        torch.testing.assert_close(layer_slice.std(-1), torch.ones(2, NUM_TEXT_TOKENS), atol=1e-4, rtol=0)
    assert embedder.embed(["a person walks"], output_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_text_embedding_matches_independent_computation(embedder, tiny_full_model):
    model, tokenizer = tiny_full_model
    prompt = "the blue truck on the highway"
    text = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
    token_ids = tokenizer(text)["input_ids"]
    token_ids = token_ids + [tokenizer.pad_token_id] * (NUM_TEXT_TOKENS - len(token_ids))
    input_ids = torch.tensor([token_ids])
    with torch.no_grad():
        hidden_states = model(input_ids=input_ids, output_hidden_states=True).hidden_states
    assert len(hidden_states) == NUM_LAYERS + 1
    expected = torch.cat(
        [(h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + 1e-8) for h in hidden_states[1:]], dim=-1
    )
    torch.testing.assert_close(embedder.embed([prompt]), expected, rtol=1e-5, atol=1e-5)


def test_text_padding_and_truncation(embedder):
    tokenizer = embedder.tokenizer
    short_ids = embedder.tokenize(["car"])
    long_ids = embedder.tokenize([" ".join(["the red car drives on the road"] * 100)])
    assert short_ids.shape == long_ids.shape == (1, NUM_TEXT_TOKENS)
    unpadded = tokenizer(embedder.chat_text("car"))["input_ids"]
    assert short_ids[0, : len(unpadded)].tolist() == unpadded
    assert (short_ids[0, len(unpadded) :] == tokenizer.pad_token_id).all()
    long_unpadded = tokenizer(embedder.chat_text(" ".join(["the red car drives on the road"] * 100)))["input_ids"]
    assert len(long_unpadded) > NUM_TEXT_TOKENS
    assert long_ids[0].tolist() == long_unpadded[:NUM_TEXT_TOKENS]  # the tail is cut, no pads
    assert embedder.embed([" ".join(["the red car"] * 300)]).shape == (
        1,
        NUM_TEXT_TOKENS,
        NUM_LAYERS * HIDDEN,
    )


def test_empty_prompt_is_a_single_space(embedder):
    empty = embedder.embed_empty(batch_size=2)
    assert empty.shape == (2, NUM_TEXT_TOKENS, NUM_LAYERS * HIDDEN)
    torch.testing.assert_close(empty[1:], embedder.embed([EMPTY_PROMPT]))


def test_tiny_constructor_is_deterministic():
    tiny = Reason1TextEmbedder.tiny(seed=0)
    again = Reason1TextEmbedder.tiny(seed=0)
    prompts = ["a car"]
    torch.testing.assert_close(tiny.embed(prompts), again.embed(prompts), rtol=0, atol=0)


def test_from_pretrained_local_folder(tmp_path, embedder, tiny_full_model):
    model, tokenizer = tiny_full_model
    model.save_pretrained(tmp_path / "reason1")
    tokenizer.save_pretrained(tmp_path / "reason1")
    loaded = Reason1TextEmbedder.from_pretrained(tmp_path / "reason1", dtype=torch.float32)
    prompts = ["the car at night"]
    torch.testing.assert_close(loaded.embed(prompts), embedder.embed(prompts), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------


def test_fingerprint_module():
    torch.manual_seed(0)
    projection = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.GELU())
    reference = fingerprint_module(projection)
    assert len(reference) == 64 and reference == fingerprint_module(projection)
    assert reference == fingerprint_tensors(reversed(list(projection.named_parameters())))  # order-free

    changed = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.GELU())
    changed.load_state_dict(projection.state_dict())
    assert fingerprint_module(changed) == reference
    with torch.no_grad():
        changed[0].weight[0, 0] += 1e-3
    assert fingerprint_module(changed) != reference
    assert fingerprint_module(projection.to(torch.bfloat16)) != reference  # dtype is part of the identity
