"""Tiny models built in code (no network): GPT-2 (HF), native attention-only, native GQA, Llama (GQA, RoPE)."""

import contextlib
import os
import shutil
import subprocess

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = (
    "When Mary and John went to the store gave a drink Then Alice Bob Carol had lot of fun at garden "
    "school office Paul Anna Tom Lucy said after lunch , . the"
).split()


def _tiny_tokenizer(directory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<unk>"] + list(dict.fromkeys(WORDS))
    words += [f"w{i}" for i in range(100 - len(words))]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    # An in-memory tokenizer lacks name_or_path, which TransformerLens needs: round-trip through disk.
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture
def unchecked():
    """A context in which mechpatch's functions run as a user calls them: without the test suite's jaxtyping/beartype
    checks (pyproject's --jaxtyping-packages), so that mechpatch's own argument checks are what refuses a wrong type."""
    import jaxtyping

    @contextlib.contextmanager
    def context():
        before = jaxtyping.config.jaxtyping_disable
        jaxtyping.config.update("jaxtyping_disable", True)
        try:
            yield
        finally:
            jaxtyping.config.update("jaxtyping_disable", before)

    return context


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return _tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def perturb(module, seed):
    """Add noise to every parameter (LayerNorm weights and biases too, which initialise to 1 and 0),
    so that a comparison that ignored them could not pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def edge_pair(seed=3, n=3, seq=6):
    """Base prompts, source prompts differing at positions 1-3, and answer tokens (the edge-patching tests' data)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, 100, (n, seq), generator=g)
    src = base.clone()
    src[:, 1:4] = torch.randint(1, 100, (n, 3), generator=g)
    return base, src, torch.randint(1, 100, (n, 2), generator=g)


def _gpt2_hf(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=100, bos_token_id=0, eos_token_id=0)
    return perturb(GPT2LMHeadModel(cfg).eval(), seed + 100)


def _llama_hf(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=128,
        vocab_size=100, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
    )
    return perturb(LlamaForCausalLM(cfg).eval(), seed + 200)


def native_config(**overrides):
    from transformer_lens.config import TransformerBridgeConfig

    kw = dict(d_model=64, d_head=16, n_heads=4, n_layers=2, n_ctx=32, d_vocab=100, normalization_type="LN", seed=0)
    kw.update(overrides)
    return TransformerBridgeConfig(**kw)


@pytest.fixture(scope="session")
def gpt2(tokenizer):
    from mechpatch.model import load_model

    return load_model(_gpt2_hf(), tokenizer=tokenizer, device="cpu", name="tiny-gpt2")


def native_model(seed=0, name="native", **overrides):
    from mechpatch.model import load_model

    model = load_model(native_config(**overrides), device="cpu", name=name)
    perturb(model.bridge, seed + 300)
    return model


@pytest.fixture(scope="session")
def attn_only():
    return native_model(1, "tiny-attn-only", attn_only=True)


@pytest.fixture(scope="session")
def gqa():
    """Native GQA model with MLP, rotary positions and RMSNorm (the SmolLM2 family's ingredients)."""
    return native_model(
        2, "tiny-gqa", attn_only=False, d_mlp=128, n_key_value_heads=2, act_fn="gelu",
        positional_embedding_type="rotary", normalization_type="RMS",
    )


@pytest.fixture(scope="session")
def llama(tokenizer):
    from mechpatch.model import load_model

    return load_model(_llama_hf(), tokenizer=tokenizer, device="cpu", name="tiny-llama")


@pytest.fixture(params=["gpt2", "attn_only", "gqa", "llama"])
def any_model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, 100, (3, 7), generator=g)


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="session")
def chromium():
    """The path of a Chromium executable, installed with apt when missing."""
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
            subprocess.run(install, env=env, capture_output=True, timeout=900, check=False)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("no Chromium, and it could not be installed (apt-get install chromium needs root and the "
                    "Debian mirrors)")
    return found


@pytest.fixture
def no_forward(monkeypatch):
    """Make any forward pass of ``model`` fail the test: a bad argument must be refused before any work."""

    def boom(*args, **kwargs):
        raise AssertionError("a forward pass ran before the bad argument was refused")

    def install(model):
        monkeypatch.setattr(model.bridge, "run_with_hooks", boom)
        monkeypatch.setattr(model.bridge, "forward", boom)
        from mechpatch.patching import fast

        monkeypatch.setattr(fast, "resolve", boom)

    return install
