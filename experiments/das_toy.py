"""The hierarchical-equality task that introduced DAS (Geiger et al.): a small model trained here, DAS with mechpatch
and with pyvene on the same model, sites and pairs.

Task: four objects a, b, c, d (tokens of 20 shapes); the answer is whether (a == b) == (c == d). A two-layer GPT-2
(Hugging Face classes, random initialisation, trained here in under a minute on a CPU) reads the four tokens and
answers at the last position (token "true" or "false"). Trained on the answer alone it stays at chance (measured:
loss 0.693 after 12,000 steps: the task is an XOR of two equalities); an auxiliary target, ``a == b`` predicted at
position 1, gets it to 100% in about 1,500 steps, and makes the intermediate variable known: ``V1 = (a == b)`` is
computed at position 1. The causal hypothesis: an interchange of V1 (at position 1) from a source input sets the
answer to ``V1(source) == V2(base)``. DAS looks for V1 at position 1 after each block.

Usage: python experiments/das_toy.py [--steps 2000] [--pyvene] [--out FILE]
Last line of output: one JSON object.
"""

import argparse
import json
import time
from typing import Any

import torch

N_SHAPES = 20
FALSE, TRUE = N_SHAPES + 1, N_SHAPES + 2  # answer tokens (shapes are 1..N_SHAPES)
POSITION = 1  # where V1 = (a == b) is computed (the auxiliary target's position)


def sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` inputs [n, 4] with balanced V1 = (a == b) and V2 = (c == d), and V1, V2."""
    v1, v2 = torch.randint(0, 2, (n,), generator=g).bool(), torch.randint(0, 2, (n,), generator=g).bool()

    def pair(equal: torch.Tensor) -> torch.Tensor:
        x = torch.randint(1, N_SHAPES + 1, (n,), generator=g)
        other = 1 + (x - 1 + torch.randint(1, N_SHAPES, (n,), generator=g)) % N_SHAPES  # a different shape
        return torch.stack([x, torch.where(equal, x, other)], 1)

    return torch.cat([pair(v1), pair(v2)], 1), v1, v2


def answer(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    return torch.where(v1 == v2, TRUE, FALSE)


def train(steps: int = 1500, seed: int = 0) -> tuple[Any, float]:
    """A two-layer GPT-2 trained on the task; returns it (eval mode) and its accuracy on fresh inputs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=8, vocab_size=N_SHAPES + 3, bos_token_id=0,
                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, v1, v2 = sample(256, g)
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits[:, -1], answer(v1, v2)) + \
            torch.nn.functional.cross_entropy(logits[:, 1], torch.where(v1, TRUE, FALSE))  # V1 at position 1
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, v1, v2 = sample(4000, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        acc = float((model(x).logits[:, -1].argmax(-1) == answer(v1, v2)).double().mean())
    return model, acc


def pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Base and source inputs and the answer an interchange of V1 predicts: V1(source) == V2(base)."""
    g = torch.Generator().manual_seed(seed)
    base, _, v2 = sample(n, g)
    source, s1, _ = sample(n, g)
    return base, source, answer(s1, v2)


def das_mechpatch(hf_model: Any, layer: int, k: int, base, source, targets, steps: int, seed: int = 0) -> Any:
    from mechpatch.das import das
    from mechpatch.model import load_model
    from mechpatch.sites import Resid

    model = load_model(hf_model, device="cpu", name="hierarchical-equality")
    return das(model, base, Resid(layer, "post", pos=POSITION), source=source, targets=targets, k=k, steps=steps,
               lr=0.01, batch_size=128, seed=seed)


def das_pyvene(hf_model: Any, layer: int, k: int, base, source, targets, steps: int, seed: int = 0) -> dict:
    """The same search with pyvene's LowRankRotatedSpaceIntervention at ``block_output`` of ``layer``, at
    :data:`POSITION`, on the same split, batches and optimiser settings."""
    import pyvene as pv

    torch.manual_seed(seed)
    start = time.time()
    config = pv.IntervenableConfig(representations=[pv.RepresentationConfig(
        layer=layer, component="block_output", low_rank_dimension=k,
        intervention_type=pv.LowRankRotatedSpaceIntervention)])
    intervenable = pv.IntervenableModel(config, hf_model)
    intervenable.disable_model_gradients()
    g = torch.Generator().manual_seed(seed)
    n = len(base)
    order = torch.randperm(n, generator=g)
    test, train_rows = order[:round(n * 0.25)], order[round(n * 0.25):]
    opt = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=0.01)

    def run(rows: torch.Tensor) -> torch.Tensor:
        loc = [[[POSITION]] * len(rows)]
        _, out = intervenable({"input_ids": base[rows]}, [{"input_ids": source[rows]}],
                              unit_locations={"sources->base": (loc, loc)})
        return out.logits[:, -1]

    for _ in range(steps):
        rows = train_rows[torch.randint(0, len(train_rows), (min(128, len(train_rows)),), generator=g)]
        loss = torch.nn.functional.cross_entropy(run(rows), targets[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        iia = float((run(test).argmax(-1) == targets[test]).double().mean())
    return {"iia": iia, "seconds": time.time() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of the model")
    parser.add_argument("--das-steps", type=int, default=300)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--pyvene", action="store_true", help="also run pyvene (pip install 'mechpatch[pyvene]')")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t = time.time()
    hf_model, acc = train(args.steps)
    result: dict = {"experiment": "das_toy", "task_accuracy": acc, "train_seconds": round(time.time() - t, 1),
                    "k": args.k, "layers": {}}
    print(f"task accuracy {acc:.4f} after {args.steps} steps ({result['train_seconds']} s)", flush=True)
    base, source, targets = pairs(2000, seed=7)
    for layer in (0, 1):
        r = das_mechpatch(hf_model, layer, args.k, base, source, targets, args.das_steps)
        entry = {"iia": r.iia, "train_iia": r.train_iia, "seconds": round(r.seconds, 2)}
        if args.pyvene:
            pv_result = das_pyvene(hf_model, layer, args.k, base, source, targets, args.das_steps)
            entry.update(pyvene_iia=pv_result["iia"], pyvene_seconds=round(pv_result["seconds"], 2))
        result["layers"][str(layer)] = entry
        print(f"layer {layer}: {entry}", flush=True)
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
