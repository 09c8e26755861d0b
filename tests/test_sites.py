import pytest

from mechpatch.errors import EmptyInputError, SiteOutOfRangeError, UnknownSiteKindError, UnsupportedSiteError
from mechpatch.sites import (
    SITE_KINDS,
    Attn,
    Embed,
    Head,
    HeadResult,
    Key,
    Mlp,
    ModelSpec,
    Neuron,
    Pattern,
    PosEmbed,
    Query,
    Resid,
    Value,
    heads,
    layers,
    parse_site,
    select,
)

SPEC = ModelSpec(n_layers=3, n_heads=4, n_kv_heads=2, d_model=16, d_head=4, d_vocab=50, n_ctx=10, d_mlp=32)
ATTN_ONLY = ModelSpec(n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8, attn_only=True, positional="rotary")

EVERY_KIND = [
    Embed(), PosEmbed(), Resid(1, "pre"), Resid(1, "mid"), Resid(2, "post"), Attn(0), Mlp(2), Head(1, 3),
    HeadResult(0, 1), Query(2, 0), Key(1, 1), Value(0, 1), Pattern(2, 3), Neuron(1, 31),
]


def test_every_kind_is_listed_and_round_trips_through_its_label():
    assert {type(s) for s in EVERY_KIND} == set(SITE_KINDS.values())
    for site in EVERY_KIND:
        assert parse_site(site.label) == site
        positioned = site.at([2, 0])
        assert parse_site(positioned.label) == positioned
        assert positioned.without_pos() == site


def test_paper_notation():
    assert parse_site("L9H6") == Head(9, 6)
    assert parse_site("9.6") == Head(9, 6)
    assert parse_site("L9H6.z") == Head(9, 6)
    assert parse_site("L9H6.k") == Key(9, 6)  # for non-GQA models a group is a head
    assert parse_site("L0.mlp@-1") == Mlp(0, pos=-1)
    assert parse_site("L2.resid_post@[1, 3]") == Resid(2, "post", pos=(1, 3))


def test_sites_are_hashable_values():
    assert len({Head(1, 2), Head(1, 2), Head(1, 2, pos=3)}) == 2
    with pytest.raises(AttributeError):
        Head(1, 2).layer = 3  # type: ignore[misc]


def test_select_expands_wildcards_and_ranges():
    assert [s.label for s in select(SPEC, "L*H0")] == ["L0H0", "L1H0", "L2H0"]
    assert [s.label for s in select(SPEC, "L1-2G*.v")] == ["L1G0.v", "L1G1.v", "L2G0.v", "L2G1.v"]
    assert len(select(SPEC, "L*H*")) == 12
    assert select(SPEC, [Head(0, 0), "L1H1"]) == [Head(0, 0), Head(1, 1)]
    assert [s.label for s in heads(SPEC, layers=[2])] == ["L2H0", "L2H1", "L2H2", "L2H3"]
    assert [s.label for s in heads(SPEC, layers=[0], kind=Key)] == ["L0G0.k", "L0G1.k"]
    assert [s.label for s in layers(SPEC, Resid, stage="mid")] == ["L0.resid_mid", "L1.resid_mid", "L2.resid_mid"]


@pytest.mark.parametrize(
    "text", ["L3.mpl", "L1H2.zz", "head9", "L1G0", "L1G0.q", "", "L1H", "embed@x"]
)
def test_unknown_site_kinds_name_the_valid_forms(text):
    with pytest.raises(UnknownSiteKindError, match="valid"):
        parse_site(text)


def test_bad_stage_lists_valid_stages():
    with pytest.raises(UnknownSiteKindError, match="'pre', 'mid', 'post'"):
        Resid(0, "middle")


@pytest.mark.parametrize(
    "site, message",
    [
        (Head(3, 0), r"layer 3 is out of range; the model has 3 layers \(valid: 0..2\)"),
        (Head(0, 4), r"head 4 is out of range; the model has 4 heads"),
        (Key(0, 2), r"key/value group 2 is out of range; the model has 2 key/value groups"),
        (Neuron(0, 32), r"neuron 32 is out of range"),
        (Pattern(2, 9), r"head 9"),
    ],
)
def test_out_of_range_names_the_valid_range(site, message):
    with pytest.raises(SiteOutOfRangeError, match=message):
        site.validate(SPEC)


def test_negative_indices_are_rejected_at_construction():
    with pytest.raises(SiteOutOfRangeError, match="layer must be >= 0"):
        Head(-1, 0)
    with pytest.raises(TypeError, match="head"):  # our check, or jaxtyping/beartype's under the test hook
        Head(0, 1.5)  # type: ignore[arg-type]


def test_positions_are_checked_against_the_prompt_and_resolved():
    assert Head(0, 0, pos=-1).validate(SPEC, seq_len=5).pos == (4,)
    with pytest.raises(SiteOutOfRangeError, match="position 5 is outside the prompt of 5 tokens"):
        Head(0, 0, pos=5).validate(SPEC, seq_len=5)
    with pytest.raises(EmptyInputError):
        Head(0, 0, pos=[])
    with pytest.raises(ValueError, match="repeated"):
        Head(0, 0, pos=[1, 1])


@pytest.mark.parametrize("site", [Mlp(0), Neuron(0, 1), Resid(0, "mid"), PosEmbed()])
def test_sites_the_architecture_lacks(site):
    with pytest.raises(UnsupportedSiteError):
        site.validate(ATTN_ONLY)


def test_empty_selection_is_an_error():
    with pytest.raises(EmptyInputError):
        select(SPEC, [])


def test_resolve_positions_never_wraps():
    import torch
    from jaxtyping import TypeCheckError

    from mechpatch.errors import InvalidArgumentError
    from mechpatch.sites import resolve_positions

    assert resolve_positions([0, -1, 3], 5) == (0, 4, 3)
    for bad in (5, 50, -6):
        with pytest.raises(SiteOutOfRangeError, match=rf"position {bad} is outside the prompt of 5 tokens "
                                                      r"\(valid: 0\.\.4, or -5\.\.-1 from the end\)"):
            resolve_positions([bad], 5)
    with pytest.raises(InvalidArgumentError, match=r"positions name a token more than once: 0 \(given as 0 and -5\)"):
        resolve_positions([0, -5], 5)
    assert resolve_positions([0, -5], 5, unique=False) == (0, 0)
    with pytest.raises((InvalidArgumentError, TypeCheckError)):  # ours, or the type checker's under the test hook
        resolve_positions([1.0], 5)
    with pytest.raises(InvalidArgumentError, match="position True is not an int"):
        resolve_positions([True], 5)
    assert resolve_positions([torch.tensor(3)], 5) == (3,)


def test_site_positions_naming_one_token_twice_are_refused():
    from mechpatch.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=r"L0H0@\[4,-1\]: positions name a token more than once"):
        Head(0, 0, pos=[4, -1]).validate(SPEC, seq_len=5)
    with pytest.raises(InvalidArgumentError, match="repeated"):
        Head(0, 0, pos=[1, 1])


def test_wildcards_without_a_spec_and_empty_ranges_are_typed_errors():
    from mechpatch.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="wildcards and ranges need a model spec"):
        parse_site("L1H*")
    with pytest.raises(InvalidArgumentError, match="empty layer range 3-1"):
        select(SPEC, "L3-1.mlp_out")
