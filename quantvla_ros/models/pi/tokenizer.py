"""Prompt building and tokenization for pi0 / pi0.5.

Real checkpoints use the PaliGemma SentencePiece tokenizer, loaded from a local folder with
transformers' AutoTokenizer. Named configs without one use `ByteTokenizer`: a small,
deterministic, dependency-free stand-in (UTF-8 bytes, Gemma's special ids) that is good for
random-weight models, tests and benchmarks, and not compatible with any trained checkpoint.
"""

from __future__ import annotations

import numpy as np

PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
_BYTE_OFFSET = 3
# The folder a checkpoint or artifact keeps its own tokenizer in (read and written by name).
TOKENIZER_DIR = "tokenizer"


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids: pad 0, eos 1, bos 2, byte b -> b + 3."""

    vocab_size = 256 + _BYTE_OFFSET

    def encode(self, text: str) -> list[int]:
        """Return bos followed by the text's UTF-8 bytes, each shifted past the special ids."""
        return [BOS_ID] + [b + _BYTE_OFFSET for b in text.encode("utf-8")]


class HFTokenizer:
    """Wraps a local Hugging Face tokenizer folder (never downloads)."""

    def __init__(self, path: str):
        """Load the tokenizer in the local folder ``path`` (no download)."""
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        """Return the text's ids after bos (when the tokenizer has one), without eos."""
        ids = self._tok.encode(text, add_special_tokens=False)
        bos = self._tok.bos_token_id
        return ([bos] if bos is not None else []) + list(ids)


def load_tokenizer(path: str | None):
    """Return the Hugging Face tokenizer at ``path``, or ByteTokenizer for None."""
    return ByteTokenizer() if path is None else HFTokenizer(path)


def clean_task(task: str) -> str:
    """Trim a task and turn underscores and newlines into spaces."""
    return task.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state_norm: np.ndarray, bins: int = 256) -> np.ndarray:
    """pi0.5 state bins: [-1, 1] -> 0..bins-1; like lerobot, < -1 gives -1 and > 1 gives bins-1."""
    edges = np.linspace(-1.0, 1.0, bins + 1)[:-1]
    return np.digitize(state_norm, bins=edges) - 1


def build_prompt(variant: str, task: str, state_norm: np.ndarray | None) -> str:
    """pi0.5 writes the discretized state into the prompt; pi0 feeds it as a token instead.

    ``state_norm`` holds exactly the values the prompt shows: the robot's normalized state
    (lerobot >= 0.5, openpi) or that state zero-padded to the model's width (lerobot 0.4.x);
    None leaves the state out (state_prompt "none": the task, then the action cue).
    """
    task = clean_task(task)
    if variant == "pi05" and state_norm is None:
        return f"Task: {task};\nAction: "
    if variant == "pi05":
        bins = " ".join(str(int(b)) for b in discretize_state(state_norm))
        return f"Task: {task}, State: {bins};\nAction: "
    return f"{task}\n"


def tokenize(tokenizer, prompt: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [max_len] and validity mask; over-long prompts are truncated."""
    ids = tokenizer.encode(prompt)[:max_len]
    out = np.full(max_len, PAD_ID, dtype=np.int64)
    out[: len(ids)] = ids
    mask = np.zeros(max_len, dtype=bool)
    mask[: len(ids)] = True
    return out, mask
