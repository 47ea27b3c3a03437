r"""A compact BPE tokenizer for a policy trained here, saved as a Hugging Face folder.

    python -m quantvla_ros.training.bpe --demos data/libero_object --out runs/tokenizer

The byte tokenizer spends one token per character: LIBERO's pi0.5 prompt ("Task: pick up the
chocolate pudding and place it in the basket, State: 12 200 ...;\nAction: ") is about 113
of them, half the prefix of the project's small policy, and each state number sits at a
position that shifts with the digits before it. This BPE is trained on the prompts the policy
will see (every instruction of the demonstrations, with and without the state, and every
state bin 0-255), so an instruction word and every bin are one token each (about 30 per
prompt). Punctuation is split off before merging, so a bin never merges with what follows.
All printable ASCII is in the base alphabet: an unseen instruction still tokenizes, by
characters. Ids 0, 1, 2 are pad, eos and bos, as in PaliGemma's tokenizer, so
``models.tokenizer.tokenize`` pads it the same way.

The folder (``tokenizer.json``, ``tokenizer_config.json``) is what ``HFTokenizer`` loads, the
path a real PaliGemma tokenizer folder takes; training copies it into the checkpoint's
``tokenizer/`` folder, where ``Policy.load`` finds it.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import numpy as np

from quantvla_ros.models.pi.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_prompt, discretize_state
from quantvla_ros.training.demos import demo_instructions

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")
assert (SPECIALS.index("<pad>"), SPECIALS.index("<eos>"), SPECIALS.index("<bos>")) == (
    PAD_ID, EOS_ID, BOS_ID)


def training_texts(instructions: list[str], bins: int = 256) -> list[str]:
    """Return the prompts to learn from: each instruction with every bin, and without state."""
    # a state vector that walks through every bin value (the prompt shows bins, not values)
    all_bins = (np.arange(bins) + 0.5) / bins * 2.0 - 1.0
    assert (discretize_state(all_bins, bins) == np.arange(bins)).all()
    texts = []
    for task in sorted(set(instructions)):
        texts.append(build_prompt("pi05", task, all_bins))
        texts.append(build_prompt("pi05", task, None))
    return texts


def train_bpe(instructions: list[str], vocab_size: int = 512):
    """Return a PreTrainedTokenizerFast trained on the prompts of ``instructions``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Metaspace()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  min_frequency=1, show_progress=False,
                                  initial_alphabet=list(string.printable))
    tok.train_from_iterator(training_texts(instructions), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def save_bpe(instructions: list[str], out: Path, vocab_size: int = 512) -> Path:
    """Train on ``instructions`` and write the Hugging Face folder ``out``; return it."""
    tok = train_bpe(instructions, vocab_size)
    if len(tok) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} ids, over the model's {vocab_size}")
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return out


def main(argv=None) -> int:
    """Train the tokenizer on a demonstration folder's instructions."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demos", required=True, help="a demonstration folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vocab-size", type=int, default=512,
                        help="at most the model's embedding rows")
    args = parser.parse_args(argv)
    instructions = demo_instructions(args.demos)
    print(save_bpe(instructions, args.out, args.vocab_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
