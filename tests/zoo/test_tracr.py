"""The shipped tracr models (mechpatch/zoo/tracr.py): they load without jax, compute their programs on every
input, their weights match their records, and their ground-truth edges are well-formed and follow from the
weights.

Reference outputs are computed here in plain Python (reverse: the reversed input; xproportion: the running
fraction of 'x'), never from the model or from tracr. Only the last test needs the ``tracr`` extra (CI
installs it): it recompiles both programs and checks the committed weights against the fresh ones.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mechpatch.errors import EmptyInputError, ModelLoadError, ShapeMismatchError, TokenizerError
from mechpatch.zoo import load
from mechpatch.zoo import tracr as z

REPO = Path(__file__).resolve().parents[2]
NAMES = ("tracr-reverse", "tracr-xproportion")
# The encodings tracr assigns (vocabulary sorted as strings, BOS and pad among them), written out by hand.
IDS = {
    "tracr-reverse": {1: 0, 2: 1, 3: 2, "BOS": 3},
    "tracr-xproportion": {"BOS": 0, "w": 2, "x": 3, "y": 4, "z": 5},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many tiny forward passes: two OpenMP threads thrash when the runner shares the cores (measured 25x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    return {name: z.load_tracr(name) for name in NAMES}


def records():
    return {name: json.loads(Path(z.record_path(z.get(name).weights_path)).read_text()) for name in NAMES}


def every_input(name):
    """All inputs of 1..5 tokens, grouped by length, and their token ids built by hand (not with encode)."""
    vocab = [1, 2, 3] if name == "tracr-reverse" else ["w", "x", "y", "z"]
    groups = [[()]]
    for _ in range(5):
        groups.append([seq + (tok,) for seq in groups[-1] for tok in vocab])
    ids = IDS[name]
    return [(group, torch.tensor([[ids["BOS"]] + [ids[t] for t in seq] for seq in group])) for group in groups[1:]]


def test_loads_with_the_compiled_shapes(models):
    rev, prop = models["tracr-reverse"], models["tracr-xproportion"]
    assert repr(rev) == (
        "HookedModel('tracr-reverse', TransformerLensNative, layers=4, heads=1, d_model=41, d_mlp=30, cpu, "
        "torch.float32)"
    )
    r, p = rev.spec, prop.spec
    assert (r.n_layers, r.n_heads, r.d_model, r.d_head, r.d_mlp, r.d_vocab, r.n_ctx) == (4, 1, 41, 12, 30, 5, 6)
    assert (p.n_layers, p.n_heads, p.d_model, p.d_head, p.d_mlp, p.d_vocab, p.n_ctx) == (2, 1, 14, 7, 1, 6, 6)
    for m in models.values():
        cfg = m.bridge.cfg
        assert cfg.attention_dir == "bidirectional" and cfg.normalization_type is None and cfg.act_fn == "relu"
    assert rev(torch.tensor([[3, 0, 1]])).shape == (1, 3, 3)  # d_vocab_out: one logit per output value
    assert prop(torch.tensor([[0, 3, 2]])).shape == (1, 3, 1)  # numerical: one logit


def test_reverse_reverses_every_input(models):
    model = models["tracr-reverse"]
    value = {0: 1, 1: 2, 2: 3}
    for group, tokens in every_input("tracr-reverse"):
        logits = model(tokens)
        expected = [list(reversed(seq)) for seq in group]
        assert [[value[int(i)] for i in row] for row in logits[:, 1:].argmax(-1)] == expected
        # tracr's categorical output is one-hot: the right logit is 1, the others 0
        onehot = torch.nn.functional.one_hot(logits[:, 1:].argmax(-1), 3).float()
        assert torch.allclose(logits[:, 1:], onehot, atol=1e-5)
        assert z.decode("tracr-reverse", logits) == expected
    assert sum(len(g) for g, _ in every_input("tracr-reverse")) == 363


def test_xproportion_gives_the_running_fraction_of_x(models):
    model = models["tracr-xproportion"]
    worst = 0.0
    for group, tokens in every_input("tracr-xproportion"):
        out = model(tokens)[:, 1:, 0]
        expected = torch.tensor([[seq[: i + 1].count("x") / (i + 1) for i in range(len(seq))] for seq in group])
        worst = max(worst, float((out - expected).abs().max()))
        decoded = torch.tensor(z.decode("tracr-xproportion", model(tokens)))
        assert torch.allclose(decoded, expected, atol=1e-5, rtol=0)
    assert worst < 1e-5, worst
    assert sum(len(g) for g, _ in every_input("tracr-xproportion")) == 1364


def test_float64_and_the_zoo_registry():
    model = load("tracr-reverse", dtype="float64")
    assert model.dtype == torch.float64 and model.name == "tracr-reverse"
    assert z.decode("tracr-reverse", model(z.encode("tracr-reverse", [[1, 1, 2, 3, 3]]))) == [[3, 3, 2, 1, 1]]
    assert load("tracr-xproportion").name == "tracr-xproportion"


def test_helpers_agree_with_the_hand_made_encoding():
    for name in NAMES:
        for group, tokens in every_input(name):
            assert torch.equal(z.encode(name, group), tokens)
        assert z.all_inputs(name) == [seq for group, _ in every_input(name) for seq in group]
        assert {tok: i for tok, i in z.input_encoding(name).items() if tok != z.PAD} == IDS[name]
    assert z.encode("tracr-xproportion", ["wxyz"]).tolist() == [[0, 2, 3, 4, 5]]
    assert len(z.acdc_inputs("tracr-reverse")) == 6 and len(z.acdc_inputs("tracr-xproportion")) == 256


def test_bad_inputs_are_refused_with_the_valid_choices():
    with pytest.raises(TokenizerError, match=r"token 4, .* valid tokens: 1, 2, 3"):
        z.encode("tracr-reverse", [[1, 4]])
    with pytest.raises(TokenizerError, match=r"'BOS'.* valid tokens: 'w', 'x', 'y', 'z' \(BOS is added"):
        z.encode("tracr-xproportion", [["BOS", "x"]])
    with pytest.raises(TokenizerError, match="wrap a single input"):
        z.encode("tracr-reverse", [1, 2, 3])
    with pytest.raises(TokenizerError, match="wrap a single input"):
        z.encode("tracr-xproportion", "wxy")
    with pytest.raises(TokenizerError, match="different lengths"):
        z.encode("tracr-reverse", [[1, 2], [1]])
    with pytest.raises(TokenizerError, match=r"6 tokens; tracr-reverse takes 1..5"):
        z.encode("tracr-reverse", [[1] * 6])
    with pytest.raises(EmptyInputError):
        z.encode("tracr-reverse", [])
    with pytest.raises(TokenizerError, match="1..5"):
        z.all_inputs("tracr-reverse", 6)
    with pytest.raises(ShapeMismatchError, match=r"\[batch, pos, 1\]"):
        z.decode("tracr-xproportion", torch.zeros(1, 3, 3))
    with pytest.raises(ModelLoadError, match="valid: 'tracr-reverse', 'tracr-xproportion'"):
        z.load_tracr("tracr-sort")
    with pytest.raises(ModelLoadError, match="valid"):
        z.encode("reverse", [[1]])


def test_changed_or_missing_weights_are_refused(tmp_path):
    spec = z.get("tracr-reverse")
    weights = tmp_path / spec.weights_file
    shutil.copy(spec.weights_path, weights)
    record = json.loads(Path(z.record_path(spec.weights_path)).read_text())
    Path(z.record_path(weights)).write_text(json.dumps(record))
    assert z.load_tracr("tracr-reverse", weights=weights).name == "tracr-reverse"
    Path(z.record_path(weights)).write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    with pytest.raises(ModelLoadError, match="sha256"):
        z.load_tracr("tracr-reverse", weights=weights)
    Path(z.record_path(weights)).write_text(json.dumps(record))
    with pytest.raises(ModelLoadError, match="record of 'tracr-reverse', not of 'tracr-xproportion'"):
        z.load_tracr("tracr-xproportion", weights=weights)
    Path(z.record_path(weights)).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        z.load_tracr("tracr-reverse", weights=weights)


def test_records_match_the_weights_and_say_how_they_were_made():
    for name, rec in records().items():
        spec = z.get(name)
        assert rec["name"] == name and rec["weights_sha256"] == z.file_sha256(spec.weights_path)
        assert rec["architecture"] == dict(spec.architecture)
        assert rec["input_encoding"] == [list(pair) for pair in spec.encoding]
        assert len(rec["residual_labels"]) == spec.architecture["d_model"] == len(set(rec["residual_labels"]))
        assert {"torch", "transformer-lens", "tracr-pypi", "jax"} <= set(rec["versions"])
        assert (REPO / rec["script"]).exists() and (REPO / "configs" / "compile_tracr.yaml").exists()
        checks = rec["checks"]["on_every_input"]
        assert checks["inputs"] == len(z.all_inputs(name))
        assert max(checks["max_abs_diff_vs_tracr"].values()) < 1e-5
    assert records()["tracr-reverse"]["output"]["decoding"] == [[0, 1], [1, 2], [2, 3]]
    assert records()["tracr-xproportion"]["output"]["kind"] == "numerical"


def test_ground_truth_edges_are_well_formed():
    counts = {"tracr-reverse": (10, 24), "tracr-xproportion": (5, 14)}
    for name, rec in records().items():
        truth = rec["ground_truth"]
        edges = z.ground_truth_edges(name)
        n_layers, n_heads = z.get(name).architecture["n_layers"], 1
        assert (len(edges), truth["acdc_edge_count"]) == counts[name] == (truth["count"], len(truth["acdc_edges"]))
        assert all(set(e) == {"sender", "receiver"} for e in edges)
        assert len({(e["sender"], e["receiver"]) for e in edges}) == len(edges)
        assert {e["sender"] for e in edges} <= set(z.senders(n_layers, n_heads))
        assert {e["receiver"] for e in edges} <= set(z.receivers(n_layers, n_heads))
        assert all(z.parse_node(e["sender"]).order < z.parse_node(e["receiver"]).order for e in edges)
        # every ACDC edge maps to a neutral one, or is inside a node
        mapped = [a["neutral"] for a in truth["acdc_edges"] if a["neutral"] is not None]
        assert {(e["sender"], e["receiver"]) for e in mapped} == {(e["sender"], e["receiver"]) for e in edges}
        assert "hook_resid_post" in truth["format"] and truth["derivation"]["acdc_equals_functional"] is True
    assert {"sender": "L3H0", "receiver": "logits"} in z.ground_truth_edges("tracr-reverse")
    assert {"sender": "L2.mlp", "receiver": "L3H0.q"} in z.ground_truth_edges("tracr-reverse")


def test_edges_follow_from_the_weights(models):
    """Re-derived here without tracr: the edges the weights allow, and which of them matter under zero ablation
    on every input, are the record's; the ones that matter are exactly ACDC's."""
    for name, model in models.items():
        rec = records()[name]["ground_truth"]["derivation"]
        labels = z.residual_labels(name)
        allowed = z.structural_edges(model, labels)
        assert [(e["sender"], e["receiver"], e["via"]) for e in allowed] == [
            (e["sender"], e["receiver"], e["via"]) for e in rec["structural_edges"]
        ]
        truth = z.ground_truth_edges(name)
        batches = [tokens for _, tokens in every_input(name)]
        base = [model(t)[:, 1:] for t in batches]
        for e in allowed:
            edge = {"sender": e["sender"], "receiver": e["receiver"]}
            with z.zero_ablated(model, labels, [edge]):
                change = max(float((model(t)[:, 1:] - b).abs().max()) for t, b in zip(batches, base))
            assert (change > 1e-4) == (edge in truth), (name, edge, change)
        assert all(torch.equal(model(t)[:, 1:], b) for t, b in zip(batches, base))  # weights restored
    with pytest.raises(ValueError, match="bad node name"):
        z.parse_node("L1.mpl")
    with pytest.raises(IndexError, match="no edge L7.mlp -> logits"):
        edge = {"sender": "L7.mlp", "receiver": "logits"}
        with z.zero_ablated(models["tracr-xproportion"], z.residual_labels("tracr-xproportion"), [edge]):
            pass


def test_loading_needs_no_jax():
    code = (
        "import sys; from mechpatch.zoo.tracr import load_tracr, encode, decode; m = load_tracr('tracr-reverse'); "
        "assert decode('tracr-reverse', m(encode('tracr-reverse', [[1, 2]]))) == [[2, 1]]; "
        "bad = [k for k in ('jax', 'tracr', 'haiku') if k in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_recompiling_gives_the_committed_weights(tmp_path):
    """Needs the tracr extra. The script itself checks the converted models against tracr on every input
    (and raises if they differ); here the fresh weights must equal the committed ones."""
    pytest.importorskip("tracr")
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("compile_tracr", REPO / "experiments" / "compile_tracr.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = yaml.safe_load((REPO / "configs" / "compile_tracr.yaml").read_text())
    cfg["out_dir"] = str(tmp_path)
    path = tmp_path / "compile.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert script.main([str(path)]) == 0  # sets the config's thread count and restores it
    committed = records()
    for name in NAMES:
        fresh, shipped = load_file(tmp_path / z.get(name).weights_file), load_file(z.get(name).weights_path)
        assert fresh.keys() == shipped.keys()
        assert all(torch.allclose(fresh[k], shipped[k], atol=1e-6, rtol=0) for k in fresh)
        rec = json.loads(Path(z.record_path(tmp_path / z.get(name).weights_file)).read_text())
        assert rec["residual_labels"] == committed[name]["residual_labels"]
        assert rec["ground_truth"]["edges"] == committed[name]["ground_truth"]["edges"]
        assert rec["ground_truth"]["derivation"]["acdc_equals_functional"] is True
        assert rec["checks"]["on_every_input"]["inputs"] == len(z.all_inputs(name))
        assert z.load_tracr(name, weights=tmp_path / z.get(name).weights_file).name == name  # its sha256 checks out
