"""A tiny GPT-2 saved to a local directory, with a tokenizer that can express IOI, greater-than and
docstring, for running the published-circuit experiments end to end (their configs point at it)."""

import sys
from pathlib import Path

import pytest
import torch

from tests.tasks.conftest import WHOLE_YEARS, YEAR_CENTURIES, byte_word_tokenizer, model_for

# the published-circuit experiments' helper module, experiments/published/published.py, is imported as `published`
# (a script run from that folder has it on sys.path; the scripts also put it there when loaded by file path)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "published"))


def experiment_tokenizer(directory):
    from mechpatch.tasks.docstring import ARG_NAMES, DESC_WORDS, render
    from mechpatch.tasks.greater_than import NOUNS
    from mechpatch.tasks.ioi import BABA_TEMPLATES, NAMES, OBJECTS, PLACES

    filled = [t.replace("[A]", "Mary").replace("[B]", "John").replace("[PLACE]", "store").replace("[OBJECT]", "drink")
              for t in BABA_TEMPLATES]
    years = ["The lasted from the year to the year"] + [f" {c}" for c in YEAR_CENTURIES] + \
        [f"{y:02d}" for y in range(100)] + list(WHOLE_YEARS)
    code = [render("m", ["a", "b"], ["c", "d"], ["a", "e"], [["f", "g"], ["h", "i"]])]
    words = NAMES[:20] + PLACES + OBJECTS + NOUNS[:20] + ARG_NAMES[:30] + DESC_WORDS[:20] + ("self",)
    split = "|".join(WHOLE_YEARS) + r"| ?\d\d"
    return byte_word_tokenizer(directory, texts=filled + years + code, words=words, split=split,
                               bare=DESC_WORDS[:20])


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 (4 heads, perturbed weights) and its tokenizer, saved as a model directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import perturb

    directory = tmp_path_factory.mktemp("tiny-gpt2")
    tok = experiment_tokenizer(directory)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=len(tok), bos_token_id=0,
                     eos_token_id=0)
    perturb(GPT2LMHeadModel(cfg).eval(), 21).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_attn_only(tiny_gpt2_dir):
    """A native attention-only model (as attn-only-4l is) with the same tokenizer."""
    from transformers import AutoTokenizer

    return model_for(AutoTokenizer.from_pretrained(tiny_gpt2_dir), "tiny-attn-only-words", 22, attn_only=True,
                     n_ctx=64)
