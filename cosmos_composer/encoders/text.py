"""Cosmos-Reason1 text embedder (the text encoder of Cosmos-Predict2.5 / Transfer2.5).

Semantics follow upstream ``cosmos_transfer2/_src/predict2/text_encoders/text_encoder.py``
(``TextEncoder.compute_text_embeddings_online`` with ``embedding_concat_strategy="full_concat"``):

1. Each prompt becomes a chat: a system turn with :data:`SYSTEM_PROMPT` and a user turn with the
   prompt, rendered by the tokenizer's chat template without a generation prompt, then tokenized.
2. The token ids are padded with the tokenizer's ``pad_token_id`` or truncated (the tail is cut) to
   exactly :data:`NUM_TEXT_TOKENS` = 512.
3. The Qwen2.5-VL language model runs on the whole padded batch with **no attention mask** (plain
   causal attention, pads are embedded like any token; because pads come last they never change the
   states of the real tokens).
4. ``hidden_states[1:]`` (the outputs of decoder layers 1..N; as in transformers and upstream, the
   last entry is after the final RMSNorm) are each normalised per token over the hidden dimension,
   ``(h - mean) / (std + 1e-8)`` with torch's default unbiased std, in the model's dtype as upstream,
   and concatenated along the feature axis: ``[B, 512, N * hidden]`` = ``[B, 512, 28 * 3584 = 100352]``
   for Cosmos-Reason1.1-7B.

The "empty" prompt upstream uses for text dropout / unconditional embeddings is the single space
:data:`EMPTY_PROMPT` (``compute_empty_and_negative_text_embeddings``), embedded like any prompt.

Only the language model is kept in memory; the vision tower and the LM head are dropped after
loading (upstream keeps and runs them, but their outputs are unused).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = [
    "EMPTY_PROMPT",
    "NUM_TEXT_TOKENS",
    "REASON1_EMBED_DIM",
    "REASON1_REPO",
    "REASON1_REVISION",
    "REASON1_URI",
    "Reason1TextEmbedder",
    "SYSTEM_PROMPT",
    "build_tiny_tokenizer",
    "mean_normalize",
    "tiny_qwen2_5_vl_config",
]

NUM_TEXT_TOKENS = 512
SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."
EMPTY_PROMPT = " "

# Hugging Face source of the text encoder and its Qwen tokenizer, pinned to the revision that upstream's
# packages/cosmos-oss/cosmos_oss/checkpoints.py downloads ("nvidia/Cosmos-Reason1.1-7B", served from this repo).
REASON1_REPO = "nvidia/Cosmos-Reason1-7B"
REASON1_REVISION = "3210bec0495fdc7a8d3dbb8d58da5711eab4b423"
REASON1_NUM_LAYERS = 28
REASON1_HIDDEN_SIZE = 3584
REASON1_EMBED_DIM = REASON1_NUM_LAYERS * REASON1_HIDDEN_SIZE  # 100352
REASON1_URI = f"hf://{REASON1_REPO}@{REASON1_REVISION}"  # the same, as an hf:// source of build_encoders

# Reason1TextEmbedder.tiny()'s size (the tiny network presets' crossattn_proj_in_channels = their product).
TINY_NUM_LAYERS = 3
TINY_HIDDEN_SIZE = 32


def mean_normalize(hidden_B_L_D: torch.Tensor) -> torch.Tensor:
    """Upstream ``TextEncoder.mean_normalize``: per token, over the last dim, unbiased std."""
    return (hidden_B_L_D - hidden_B_L_D.mean(dim=-1, keepdim=True)) / (hidden_B_L_D.std(dim=-1, keepdim=True) + 1e-8)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers >= 4.56 calls the from_pretrained argument ``dtype`` (``torch_dtype`` is deprecated)."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _language_model_of(model: nn.Module) -> nn.Module:
    """The Qwen2.5-VL text decoder inside a ForConditionalGeneration / VLModel / TextModel."""
    inner = getattr(model, "model", model)  # ForConditionalGeneration -> Qwen2_5_VLModel
    language_model = getattr(inner, "language_model", inner)  # Qwen2_5_VLModel -> Qwen2_5_VLTextModel
    if not hasattr(language_model, "layers") or not hasattr(language_model, "embed_tokens"):
        raise TypeError(
            "cosmos_composer/encoders/text.py: expected a transformers Qwen2.5-VL model "
            f"(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel or Qwen2_5_VLTextModel), got {type(model).__name__}."
        )
    return language_model


class Reason1TextEmbedder(nn.Module):
    """Frozen Cosmos-Reason1 text embedder producing ``[B, 512, num_layers * hidden]`` embeddings.

    Args:
        model: a transformers Qwen2.5-VL model (only its language model is kept).
        tokenizer: the matching tokenizer, with a chat template and a pad token.
        dtype: compute dtype of the language model (upstream: bf16).
        num_tokens: padded / truncated sequence length (upstream: 512).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        dtype: torch.dtype = torch.float32,
        num_tokens: int = NUM_TEXT_TOKENS,
    ):
        super().__init__()
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise ValueError(
                "cosmos_composer/encoders/text.py: the tokenizer has no pad token; upstream pads with "
                "tokenizer.pad_token_id ('<|endoftext|>' for Qwen2.5-VL). Set tokenizer.pad_token first."
            )
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "cosmos_composer/encoders/text.py: the tokenizer has no chat template; load it from the "
                "Cosmos-Reason1 / Qwen2.5-VL folder (tokenizer_config.json or chat_template.json)."
            )
        self.language_model = _language_model_of(model).to(dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.num_tokens = num_tokens

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike = REASON1_REPO,
        revision: str | None = REASON1_REVISION,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        num_tokens: int = NUM_TEXT_TOKENS,
        **from_pretrained_kwargs: Any,
    ) -> Reason1TextEmbedder:
        """Load Cosmos-Reason1 (HF format) and its tokenizer from a local folder or an HF repo id.

        Repo ids resolve through huggingface_hub's cache (``HF_HOME``; ``HF_HUB_OFFLINE=1`` honoured);
        ``revision`` defaults to the one upstream pins and is ignored for local folders.
        """
        from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        source = str(path_or_repo)
        kwargs = dict(from_pretrained_kwargs)
        if not os.path.isdir(source) and revision is not None:
            kwargs["revision"] = revision
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            if tokenizer.chat_template is None:
                # Some Qwen2.5-VL folders keep the template only in chat_template.json (processor side).
                tokenizer.chat_template = AutoProcessor.from_pretrained(source, **kwargs).chat_template
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(source, **_dtype_kwarg(dtype), **kwargs)
        except OSError as error:
            raise OSError(
                f"cosmos_composer/encoders/text.py: could not load Cosmos-Reason1 from {source!r}"
                f"{' at revision ' + revision if 'revision' in kwargs else ''}. Give a local folder with "
                f"config.json, the safetensors and the tokenizer files, or download {REASON1_REPO} into the "
                "HF cache first (`hf download nvidia/Cosmos-Reason1-7B`; accept the license and run "
                f"`hf auth login` if the download is refused). Detail: {error}"
            ) from error
        embedder = cls(model, tokenizer, dtype=dtype, num_tokens=num_tokens)
        del model  # drops the vision tower and lm_head
        return embedder.to(device)

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        num_layers: int = TINY_NUM_LAYERS,
        hidden_size: int = TINY_HIDDEN_SIZE,
        num_tokens: int = NUM_TEXT_TOKENS,
    ) -> Reason1TextEmbedder:
        """A tiny random Qwen2.5-VL (same architecture, few layers, narrow) with an offline tokenizer."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        tokenizer = build_tiny_tokenizer()
        config = tiny_qwen2_5_vl_config(len(tokenizer), num_layers=num_layers, hidden_size=hidden_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(config)
        return cls(model, tokenizer, dtype=dtype, num_tokens=num_tokens)

    # -- properties --------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.language_model.layers)

    @property
    def hidden_size(self) -> int:
        return self.language_model.embed_tokens.embedding_dim

    @property
    def embed_dim(self) -> int:
        """Feature size of one token's embedding: ``num_layers * hidden_size`` (100352 for Reason1-7B)."""
        return self.num_layers * self.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.embed_tokens.weight.device

    # -- tokenization ------------------------------------------------------------------------

    def chat_text(self, prompt: str) -> str:
        """The chat-templated text of one prompt (system + user turns, no generation prompt)."""
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "text", "text": prompt}]},
        ]
        return self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=False, add_vision_id=False
        )

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> token ids ``[B, num_tokens]``, padded with the pad id or truncated at the end."""
        if isinstance(prompts, str):
            raise TypeError("cosmos_composer/encoders/text.py: pass a list of prompts, e.g. embed([prompt]).")
        pad_id = self.tokenizer.pad_token_id
        rows = []
        for prompt in prompts:
            token_ids = list(self.tokenizer(self.chat_text(prompt))["input_ids"])
            if len(token_ids) < self.num_tokens:
                token_ids = token_ids + [pad_id] * (self.num_tokens - len(token_ids))
            else:
                token_ids = token_ids[: self.num_tokens]
            rows.append(token_ids)
        return torch.tensor(rows, dtype=torch.long).reshape(len(prompts), self.num_tokens)

    # -- embedding ---------------------------------------------------------------------------

    @torch.no_grad()
    def embed_tokens_ids(self, input_ids_B_L: torch.Tensor, output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Token ids ``[B, L]`` -> ``[B, L, num_layers * hidden]`` (FULL_CONCAT of normalised layers)."""
        outputs = self.language_model(
            input_ids=input_ids_B_L.to(self.device),
            attention_mask=None,  # upstream passes none: causal attention over every token, pads included
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
        hidden_states = outputs.hidden_states  # (embeddings, layer 1, ..., layer N [after final norm])
        normalized = [mean_normalize(hidden_B_L_D) for hidden_B_L_D in hidden_states[1:]]
        return torch.cat(normalized, dim=-1).to(output_dtype)

    def embed(self, prompts: list[str], output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Prompts -> embeddings ``[B, num_tokens, embed_dim]`` (``[B, 512, 100352]`` for Reason1-7B)."""
        return self.embed_tokens_ids(self.tokenize(prompts), output_dtype=output_dtype)

    def embed_empty(self, batch_size: int = 1, output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Upstream's empty-prompt embedding (the prompt ``" "``), repeated ``batch_size`` times."""
        return self.embed([EMPTY_PROMPT], output_dtype=output_dtype).expand(batch_size, -1, -1).clone()


# ---------------------------------------------------------------------------------------------
# Tiny offline configuration for tests
# ---------------------------------------------------------------------------------------------

# A text-only chat template rendering exactly like Qwen2.5-VL's for text content:
# "<|im_start|>{role}\n{text}<|im_end|>\n" per turn, "<|im_start|>assistant\n" as generation prompt.
_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
_TINY_WORDS = (
    "system user assistant You you are a helpful assistant who will provide prompts to an image generator . , "
    "the car drives on road at night with rain city street camera front left right rear view red blue "
    "green truck person walks bicycle sunny day highway lane traffic light"
)


def build_tiny_tokenizer():
    """A small word-level ``PreTrainedTokenizerFast`` with Qwen's special tokens and chat format.

    Works offline. Unknown words map to ``<unk>``; ``<|endoftext|>`` is the pad token, as in Qwen2.5-VL.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(_TINY_WORDS.split()))
    vocab = {token: index for index, token in enumerate(_TINY_SPECIAL_TOKENS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = _TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_qwen2_5_vl_config(vocab_size: int, num_layers: int = TINY_NUM_LAYERS, hidden_size: int = TINY_HIDDEN_SIZE):
    """A tiny ``Qwen2_5_VLConfig``: the Reason1 architecture with few layers and a narrow width."""
    from transformers import Qwen2_5_VLConfig

    num_heads = 4
    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or head_dim % 4:
        raise ValueError("cosmos_composer/encoders/text.py: tiny hidden_size must be a multiple of 16.")
    half = head_dim // 2  # multimodal RoPE sections (temporal, height, width) must sum to head_dim / 2
    mrope_section = [half - 2 * (half // 4), half // 4, half // 4]
    padded_vocab = max(64, vocab_size + 8)  # room for the image/video/vision-start ids below
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": padded_vocab,
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": mrope_section},
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [0],
        },
        vocab_size=padded_vocab,
        hidden_size=hidden_size,
        image_token_id=padded_vocab - 3,
        video_token_id=padded_vocab - 2,
        vision_start_token_id=padded_vocab - 1,
    )
