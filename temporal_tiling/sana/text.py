"""SANA's text conditioning: Gemma-2 hidden states of the prompt behind SANA's complex human instruction.

Mirrors diffusers' SanaPipeline exactly (same template, same 300-token budget, same token selection):
prompt lower-cased and stripped, the instruction prepended, right padding to
`len(instruction tokens) + 300 - 2`, Gemma-2's last hidden state, then the first token plus the last 299
positions (the prompt after the template) with their attention mask. The template and budget are read from
diffusers' SanaPipeline defaults, so they stay in step with diffusers.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from diffusers import SanaPipeline
from transformers import AutoModel, AutoTokenizer, BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from .checkpoint import CheckpointError, folder_load_error, read_json

_PIPELINE_DEFAULTS = inspect.signature(SanaPipeline.__call__).parameters
COMPLEX_HUMAN_INSTRUCTION: tuple[str, ...] = tuple(_PIPELINE_DEFAULTS["complex_human_instruction"].default)
MAX_SEQUENCE_LENGTH: int = _PIPELINE_DEFAULTS["max_sequence_length"].default
INSTRUCTION_MODES = ("auto", "always", "never")
PROMPT_SETTINGS = "prompt_settings.json"
"""Optional file in a SANA folder for models trained without SANA's prompt recipe (the embedded seam-lab
model): {"instruction": "never", "max_sequence_length": 32}. Read when the caller asks for 'auto'."""


class SanaTextEncoder(torch.nn.Module):
    """Gemma-2 decoder + tokenizer producing SANA's `encoder_hidden_states` and `encoder_attention_mask`.

    `instruction`: 'always' prepends the complex human instruction (SanaPipeline's positive prompt),
    'never' encodes the bare text (SanaPipeline's negative prompt), 'auto' does the first for non-empty
    prompts and the second for empty ones, which is what SanaPipeline does with its default negative ''.
    """

    def __init__(
        self,
        text_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        instruction: str = "auto",
    ) -> None:
        super().__init__()
        if instruction not in INSTRUCTION_MODES:
            raise ValueError(f"instruction must be one of {INSTRUCTION_MODES}, got '{instruction}'.")
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.max_sequence_length = max_sequence_length
        self.instruction = instruction
        self._template = "\n".join(COMPLEX_HUMAN_INSTRUCTION)
        self._template_tokens = len(tokenizer.encode(self._template))

    @property
    def hidden_size(self) -> int:
        return int(self.text_model.config.hidden_size)

    def uses_instruction(self, prompt: str) -> bool:
        return self.instruction == "always" or (self.instruction == "auto" and bool(prompt.strip()))

    def _text_and_length(self, prompt: str) -> tuple[str, int]:
        """The text the tokenizer reads for ``prompt`` and the token count it is padded or cut to."""
        text = prompt.lower().strip()
        if self.uses_instruction(prompt):
            return self._template + text, self._template_tokens + self.max_sequence_length - 2
        return text, self.max_sequence_length

    def _padded(self, prompt: str, **options) -> tuple[str, BatchEncoding]:
        """The text the tokenizer reads for ``prompt`` and its tokens, padded or cut to the conditioning's
        length (``options``: the tokenizer's other arguments)."""
        text, length = self._text_and_length(prompt)
        tokens = self.tokenizer(
            [text],
            padding="max_length",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            **options,
        )
        return text, tokens

    def tokenize(self, prompt: str) -> dict[str, torch.Tensor]:
        """Token ids [1, L] and attention mask [1, L] of one prompt, template included when it applies."""
        _, tokens = self._padded(prompt, return_tensors="pt")
        return {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}

    def prompt_notes(self, prompt: str) -> list[str]:
        """What the model will not see of ``prompt``: words its tokenizer does not know (read as the
        unknown token) and tokens past ``max_sequence_length`` (cut off); [] when it sees all of it."""
        if not prompt.strip():
            return ["the prompt is empty, so nothing steers the picture"]
        notes = []
        text = prompt.lower().strip()
        unknown_id = self.tokenizer.unk_token_id
        if unknown_id is not None:
            tokens = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            pairs = zip(tokens.input_ids, tokens.offset_mapping, strict=True)
            unknown = ", ".join(dict.fromkeys(text[a:b] for i, (a, b) in pairs if i == unknown_id))
            if unknown:
                notes.append(f"words the model does not know (read as {self.tokenizer.unk_token}): {unknown}")
        full, length = self._text_and_length(prompt)
        count = len(self.tokenizer(full, add_special_tokens=True).input_ids)
        if count > length:
            dropped = count - length
            tokens = "token is" if dropped == 1 else "tokens are"
            notes.append(f"the prompt is cut short: its last {dropped} {tokens} dropped")
        return notes

    def token_spans(self, prompt: str) -> tuple[str, list[tuple[int, int] | None]]:
        """The prompt as the tokenizer reads it (lower-cased, stripped) and, for each token of its
        conditioning (:meth:`encode_tokens`' selection, padding included), the characters of that text the
        token reads; None for the start token, the template and padding (automatic tile prompts)."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise CheckpointError(
                f"automatic tile prompts need a fast tokenizer (tokenizer.json) to place each token in "
                f"the prompt; {type(self.tokenizer).__name__} is not one: use manual tile prompts."
            )
        text, tokens = self._padded(prompt, return_offsets_mapping=True)
        start = len(text) - len(prompt.lower().strip())  # the template before the prompt
        pairs = list(zip(tokens["offset_mapping"][0], tokens["attention_mask"][0], strict=True))
        spans: list[tuple[int, int] | None] = []
        for (first, end), valid in (pairs[i] for i in [0, *range(-self.max_sequence_length + 1, 0)]):
            inside = valid and end > start and end > first
            spans.append((max(first - start, 0), end - start) if inside else None)
        return text[start:], spans

    @torch.no_grad()
    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [1, 300, D] and mask [1, 300] of the tokens after the template (plus BOS)."""
        device = next(self.text_model.parameters()).device
        ids = tokens["input_ids"].to(device)
        mask = tokens["attention_mask"].to(device)
        hidden = self.text_model(ids, attention_mask=mask)[0]
        select = [0, *range(-self.max_sequence_length + 1, 0)]
        return hidden[:, select], mask[:, select]

    def encode(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of prompts -> (embeds [B, 300, D], mask [B, 300])."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        pairs = [self.encode_tokens(self.tokenize(p)) for p in prompts]
        return torch.cat([e for e, _ in pairs]), torch.cat([m for _, m in pairs])


def _find(folder: Path, sub: str, marker: str) -> Path | None:
    for candidate in (folder / sub, folder):
        if (candidate / marker).is_file():
            return candidate
    return None


def load_text_encoder(
    folder: str | Path, dtype: torch.dtype | None = None, instruction: str = "auto"
) -> SanaTextEncoder:
    """Gemma-2 text encoder + tokenizer from a diffusers SANA folder (text_encoder/, tokenizer/) or a
    transformers folder holding both (e.g. gemma-2-2b-it). Only local files are read."""
    folder = Path(folder)
    model_dir = _find(folder, "text_encoder", "config.json")
    tokenizer_dir = _find(folder, "tokenizer", "tokenizer_config.json")
    if model_dir is None:
        raise CheckpointError(
            f"No text encoder in '{folder}': expected text_encoder/config.json (diffusers SANA folder) or a "
            "Gemma-2 folder with config.json. Put SANA's Gemma-2 (gemma-2-2b-it) into models/text_encoders."
        )
    if tokenizer_dir is None:
        raise CheckpointError(
            f"No tokenizer in '{folder}': expected tokenizer/tokenizer_config.json next to the text encoder."
        )
    # Whatever transformers or tokenizers raise on a broken file, named by folder_load_error.
    try:
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:
        raise folder_load_error("text encoder", model_dir, exc) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except Exception as exc:
        raise folder_load_error("tokenizer", tokenizer_dir, exc) from exc
    if dtype is not None:
        model = model.to(dtype)
    settings_file = folder / PROMPT_SETTINGS
    settings = read_json(settings_file) if settings_file.is_file() else {}
    return SanaTextEncoder(
        model.eval().requires_grad_(False),
        tokenizer,
        max_sequence_length=settings.get("max_sequence_length", MAX_SEQUENCE_LENGTH),
        instruction=settings.get("instruction", "auto") if instruction == "auto" else instruction,
    )
