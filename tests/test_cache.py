import pytest
import torch

from mechpatch.cache import cache_activations, estimate_cache_bytes, parse_bytes
from mechpatch.errors import (
    EmptyInputError,
    GatedHookError,
    InvalidArgumentError,
    MemoryBudgetError,
    ShapeMismatchError,
    SiteOutOfRangeError,
    TokenizerError,
)
from mechpatch.prompts import make_pair
from mechpatch.sites import (
    Attn,
    Embed,
    Head,
    HeadResult,
    Key,
    Mlp,
    Neuron,
    Pattern,
    PosEmbed,
    Query,
    Resid,
    Value,
)


def _sites_for(model):
    sites = [Embed(), Resid(0, "pre"), Resid(1, "post"), Attn(1), Head(0, 2), Head(1, 3, pos=[0, 4]),
             Query(1, 1, pos=-1), Key(0, 1), Value(1, 0, pos=2), Pattern(1, 0), Pattern(0, 3, pos=5)]
    if model.spec.has_mlp:
        sites += [Resid(0, "mid"), Mlp(0), Neuron(1, 7, pos=3)]
    if model.spec.has_pos_embed:
        sites += [PosEmbed()]
    return sites


def test_cached_sites_equal_plain_run_with_cache(any_model, tokens):
    sites = _sites_for(any_model)
    cache = cache_activations(any_model, tokens, sites, batch_size=2)  # two chunks
    _, ref = any_model.bridge.run_with_cache(tokens)
    for site in sites:
        point = any_model.hook_point(site, tokens.shape[1])
        expected = ref[point.name][point.index(tokens.shape[1])]
        # chunking changes the batch size, so BLAS may round differently: float32 tolerance, not bitwise. The
        # rounding is relative to the activations' scale (residual streams reach ~7 here), so atol is too
        scale = float(expected.abs().max()) if expected.numel() else 1.0
        torch.testing.assert_close(cache[site], expected, atol=1e-6 * max(1.0, scale), rtol=1e-5, msg=site.label)
    assert cache[Head(0, 2)].shape == (3, 7, 16)
    assert cache[Head(1, 3, pos=[0, 4])].shape == (3, 2, 16)
    assert cache[Pattern(0, 3, pos=5)].shape == (3, 7)  # key axis of query position 5
    assert cache[Key(0, 1)].shape == (3, 7, 16)


def test_cache_stores_only_the_requested_hooks(gpt2, tokens):
    cache = cache_activations(gpt2, tokens, [Head(0, 0), Head(0, 1), Mlp(1)])
    assert set(cache.tensors) == {"blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"}
    assert cache.nbytes == estimate_cache_bytes(gpt2, [Head(0, 0), Mlp(1)], *tokens.shape)
    with pytest.raises(KeyError, match="was not cached"):
        cache[Head(1, 0)]


def test_gated_sites_are_cached_and_flags_restored(gpt2, llama, tokens):
    for model in (gpt2, llama):
        cache = cache_activations(model, tokens, [HeadResult(1, 2)])
        with model.gates([HeadResult(1, 2)]):
            _, ref = model.bridge.run_with_cache(tokens)
        torch.testing.assert_close(cache[HeadResult(1, 2)], ref["blocks.1.attn.hook_result"][:, :, 2])
        assert not model.bridge.cfg.use_attn_result


def test_gated_site_the_architecture_cannot_enable(attn_only, tokens):
    with pytest.raises(GatedHookError):
        cache_activations(attn_only, tokens, [HeadResult(0, 0)])


def test_device_and_dtype_of_storage(gqa, tokens):
    cache = cache_activations(gqa, tokens, [Resid(1, "post")], dtype="bfloat16", device="cpu")
    t = cache[Resid(1, "post")]
    assert t.dtype == torch.bfloat16 and t.device.type == "cpu"
    _, ref = gqa.bridge.run_with_cache(tokens)
    torch.testing.assert_close(t, ref["blocks.1.hook_resid_post"].to(torch.bfloat16))


def test_memory_budget_is_checked_before_running(gpt2, tokens):
    need = estimate_cache_bytes(gpt2, [Resid(0, "pre"), Head(1, 0), Head(1, 1)], *tokens.shape)
    assert need == 3 * 7 * 64 * 4 + 3 * 7 * 4 * 16 * 4  # resid + the whole hook_z of layer 1, float32
    with pytest.raises(MemoryBudgetError, match=r"over the budget of 100 B.*at most 0 prompts"):
        cache_activations(gpt2, tokens, [Resid(0, "pre"), Head(1, 0)], memory_budget=100)
    cache_activations(gpt2, tokens, [Resid(0, "pre"), Head(1, 0)], memory_budget=need)
    assert parse_bytes("1.5 KiB") == 1536
    with pytest.raises(ValueError, match="cannot read memory budget"):
        parse_bytes("lots")


def test_bad_cache_requests(gpt2, tokens):
    with pytest.raises(EmptyInputError):
        cache_activations(gpt2, tokens, [])
    with pytest.raises(EmptyInputError):
        cache_activations(gpt2, [], [Head(0, 0)])
    with pytest.raises(SiteOutOfRangeError, match="position 7 is outside"):
        cache_activations(gpt2, tokens, [Head(0, 0, pos=7)])
    with pytest.raises(ShapeMismatchError, match="vocabulary"):
        cache_activations(gpt2, tokens + 100, [Head(0, 0)])
    with pytest.raises(ValueError, match="batch_size"):
        cache_activations(gpt2, tokens, [Head(0, 0)], batch_size=0)


def test_string_prompts_are_tokenized(gpt2):
    cache = cache_activations(gpt2, ["When Mary and John went", "When John and Mary went"], [Resid(0, "pre")])
    assert cache[Resid(0, "pre")].shape == (2, 6, 64)


def test_make_pair_with_answers(gpt2):
    pair = make_pair(
        gpt2,
        ["When Mary and John went to the store , John gave a drink to"],
        ["When Mary and John went to the store , Paul gave a drink to"],
        answers=[["Mary", "John"]],
    )
    assert pair.clean.shape == pair.corrupted.shape == (1, 15)  # BOS + 14 words
    assert pair.differing_positions == [10]
    assert pair.answers.tolist() == [[gpt2.token_id("Mary"), gpt2.token_id("John")]]
    pair2 = make_pair(gpt2, pair.clean, pair.corrupted, answers=["Mary"], wrong_answers=["John"])
    assert torch.equal(pair2.answers, pair.answers)


def test_make_pair_errors(gpt2, attn_only, tokens):
    with pytest.raises(ShapeMismatchError, match="1 clean prompts but 2 corrupted"):
        make_pair(gpt2, ["Mary went"], ["Mary went", "John went"])
    with pytest.raises(ShapeMismatchError, match="differ in shape.*e.g. clean"):
        make_pair(gpt2, ["Mary went"], ["Mary went to"])
    with pytest.raises(TokenizerError, match="not one"):
        make_pair(gpt2, ["Mary went"], ["John went"], answers=["Mary John"])
    with pytest.raises(ShapeMismatchError, match="same number of answers"):
        make_pair(gpt2, ["Mary went", "John went"], ["John went", "Mary went"], answers=[["Mary"], ["John", "Mary"]])
    with pytest.raises(TokenizerError, match="no tokenizer"):
        make_pair(attn_only, ["a b"], ["b a"])
    with pytest.warns(UserWarning, match="identical"):
        make_pair(attn_only, tokens, tokens.clone())


@pytest.mark.parametrize(
    "budget", ["lots", "2 parsecs", "", "0", "0.4", "-1GB", "...", "1e9", 0, -5, 0.5, float("nan"), float("inf")]
)
def test_memory_budgets_that_are_not_a_number_of_bytes(budget):
    """Every bad budget is an InvalidArgumentError naming the valid forms (a plain ValueError before; '...' was a
    float() crash and 0 fell back to the default budget)."""
    with pytest.raises(InvalidArgumentError, match=r"memory budget .*e\.g\. 2000000.*'2GiB'"):
        parse_bytes(budget)


def test_memory_budget_forms():
    assert parse_bytes(" 512 MB ") == 512 * 10**6
    assert parse_bytes("2gib") == 2 * 2**30
    assert parse_bytes(".5KiB") == 512
    assert parse_bytes(3000) == 3000
    with pytest.raises(InvalidArgumentError, match="valid units: 'B', 'KB'"):
        parse_bytes("3 parsecs")


def test_cache_batch_size_and_budget_are_typed_errors(gpt2, tokens):
    for bad in (0, -1, True):
        with pytest.raises(InvalidArgumentError, match="batch_size must be a positive int"):
            cache_activations(gpt2, tokens, [Head(0, 0)], batch_size=bad)
    with pytest.raises(InvalidArgumentError, match="cannot read memory budget 'lots'"):
        cache_activations(gpt2, tokens, [Head(0, 0)], memory_budget="lots")


def test_make_pair_refuses_a_bare_string_of_answers(gpt2):
    """answers=" Mary" used to be read character by character (one answer per character)."""
    clean, corrupted = ["When Mary and John went"], ["When Alice and Bob went"]
    for kw in ("answers", "wrong_answers"):
        args = {"answers": ["Mary"], kw: "Mary"} if kw == "wrong_answers" else {kw: "Mary"}
        with pytest.raises(ShapeMismatchError, match=rf"{kw} is the string 'Mary', which would be read character"):
            make_pair(gpt2, clean, corrupted, **args)


def test_make_pair_answers_must_match_the_prompts(gpt2):
    clean, corrupted = ["When Mary and John went", "When John and Mary went"], ["When Alice and Bob went"] * 2
    with pytest.raises(ShapeMismatchError, match=r"3 answers entries for 2 prompts; answers must hold one entry per"):
        make_pair(gpt2, clean, corrupted, answers=["Mary", "John", "Alice"])
    with pytest.raises(ShapeMismatchError, match=r"1 answers entries for 2 prompts"):
        make_pair(gpt2, clean, corrupted, answers=[["Mary", "John"]])
    with pytest.raises(EmptyInputError, match="answers is empty"):
        make_pair(gpt2, clean, corrupted, answers=[])
    with pytest.raises(ShapeMismatchError, match="is not an answer"):
        make_pair(gpt2, clean, corrupted, answers=[[1.5], [2.0]])
    with pytest.raises(ShapeMismatchError, match="integer token ids"):
        make_pair(gpt2, clean, corrupted, answers=torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ShapeMismatchError, match="is a int"):
        make_pair(gpt2, clean, corrupted, answers=5)
    ok = make_pair(gpt2, clean, corrupted, answers=torch.tensor([5, 6]), wrong_answers=[[7], [torch.tensor(8)]])
    assert ok.answers.tolist() == [[5, 7], [6, 8]]
