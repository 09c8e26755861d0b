"""DAS, probes and the attention view: the figures of issue #17 that this project can measure so far.

- ``tracr``: DAS on tracr-xproportion for "the token at position 2 is x" (the compiler labels the residual
  dimensions). ``iia`` is the held-out IIA where layer 1 reads the variable (``L1.resid_pre@3``).
  ``subspace_cos_min`` is the smallest principal-angle cosine between the learned subspace and the labelled
  dimensions holding the variable (``map`` and the token one-hot), within the dimensions an interchange can reach.
  ``iia_after_read`` is DAS after layer 1 (``L1.resid_post@3``), and ``probe_accuracy_where_das_fails`` a probe for
  the same variable there. Seeds 0-2 each; the table reports the worst.
- ``probe``: selectivity (Hewitt & Liang) on a planted direction and on lexical memorisation.
- ``attention``: seconds for headless Chromium to decode and draw 12 heads of a 1,024-token prompt.

- ``toy``: the hierarchical-equality task (``experiments/das_toy.py``): a two-layer GPT-2 trained here, DAS for
  ``V1 = (a == b)`` at position 1 after block 0 (and after block 1, where nothing is causal any more), with mechpatch
  and, when installed (``pip install 'mechpatch[pyvene]'``), with pyvene 0.1.8 on the same model, pairs, split and
  optimiser settings: IIA and seconds side by side.

Usage: python experiments/benchmarks/bench_das.py [--out FILE]
Last line of output: one JSON object.
"""

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time

import torch

from mechpatch import zoo
from mechpatch.das import das, principal_cosines
from mechpatch.probes import fit_probe
from mechpatch.sites import Resid
from mechpatch.zoo import tracr

NAME, J = "tracr-xproportion", 2


def tracr_figures() -> dict:
    model = zoo.load(NAME)
    inputs = ["".join(p) for p in itertools.product("wxyz", repeat=4)]
    g = torch.Generator().manual_seed(0)
    drawn = zip(torch.randint(0, 256, (600,), generator=g).tolist(), torch.randint(0, 256, (600,), generator=g).tolist())
    keep = [(a, b) for a, b in drawn if (inputs[a][J] == "x") != (inputs[b][J] == "x")]
    base = tracr.encode(NAME, [inputs[a] for a, _ in keep])
    source = tracr.encode(NAME, [inputs[b] for _, b in keep])
    targets = torch.tensor([(inputs[a].count("x") - (inputs[a][J] == "x") + (inputs[b][J] == "x")) / 4
                            for a, b in keep])
    labels = tracr.residual_labels(NAME)
    holds = torch.zeros(5, len(labels))
    for i, n in enumerate(["map", "tokens:w", "tokens:x", "tokens:y", "tokens:z"]):
        holds[i, labels.index(n)] = 1.0
    read, after = Resid(1, "pre", pos=J + 1), Resid(1, "post", pos=J + 1)
    point = model.hook_point(read, base.shape[1])
    acts = [model.bridge.run_with_cache(t, names_filter=point.name)[1][point.name][point.index(base.shape[1])]
            for t in (source, base)]
    _, s, vh = torch.linalg.svd((acts[0] - acts[1]).double(), full_matrices=False)
    reachable = vh[s > 1e-6 * s[0]]
    runs = []
    for seed in range(3):
        r = das(model, base, read, source=source, targets=targets, k=1, loss="mse", steps=300, lr=0.01, seed=seed)
        cos = principal_cosines((r.basis.double() @ reachable.T) @ reachable, holds).min()
        a = das(model, base, after, source=source, targets=targets, k=1, loss="mse", steps=300, lr=0.01, seed=seed)
        runs.append({"iia": r.iia, "cos": float(cos), "iia_after": a.iia, "seconds": r.seconds})
    tokens = tracr.encode(NAME, inputs)
    p_after = model.hook_point(after, tokens.shape[1])
    act = model.bridge.run_with_cache(tokens, names_filter=p_after.name)[1][p_after.name][p_after.index(5)]
    probe = fit_probe(act, torch.tensor([x[J] == "x" for x in inputs]).long())
    return {"pairs": len(keep), "iia": min(x["iia"] for x in runs), "subspace_cos_min": min(x["cos"] for x in runs),
            "iia_after_read": max(x["iia_after"] for x in runs), "probe_accuracy_where_das_fails": probe.accuracy,
            "das_seconds": round(sum(x["seconds"] for x in runs) / len(runs), 3), "seeds": runs}


def probe_figures() -> dict:
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    x = torch.randn(1200, 32, generator=g)
    planted = fit_probe(x, (x @ u > 0).long(), types=torch.randint(0, 300, (1200,), generator=g))
    types = torch.randint(0, 20, (1200,), generator=g)
    emb, label_of = torch.randn(20, 32, generator=g), torch.randint(0, 2, (20,), generator=g)
    lexical = fit_probe(emb[types] + 0.1 * torch.randn(1200, 32, generator=g), label_of[types], types=types)
    return {"selectivity_planted": planted.selectivity, "accuracy_planted": planted.accuracy,
            "selectivity_lexical": lexical.selectivity, "accuracy_lexical": lexical.accuracy}


def attention_figures() -> dict:
    """Decode-and-draw time of the view in headless Chromium (None when no Chromium is installed)."""
    from mechpatch.attention import attention_view

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    if browser is None:
        return {"render_seconds_1024": None, "why": "no Chromium"}
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 1, 12, 1024, 1024, generator=g) + torch.triu(torch.full((1024, 1024), float("-inf")), 1)
    html = attention_view(scores.softmax(-1), [[f"t{i}" for i in range(1024)]]).html
    probe = ("<script>window.addEventListener('load', function () { setTimeout(function () {"
             "var p = document.createElement('pre'); p.id = '__probe'; p.textContent = String(window.__mp_load_ms);"
             "document.body.appendChild(p); }, 300); });</script>")
    with tempfile.TemporaryDirectory() as tmp:
        page = os.path.join(tmp, "view.html")
        with open(page, "w", encoding="utf-8") as f:
            f.write(html.replace("<head>", "<head>" + probe, 1))
        out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              f"--user-data-dir={tmp}/profile", "--virtual-time-budget=60000", "--dump-dom",
                              "file://" + page], capture_output=True, text=True, timeout=300, check=False)
    found = re.search(r'<pre id="__probe">(.*?)</pre>', out.stdout)
    return {"render_seconds_1024": float(found.group(1)) / 1000 if found else None, "page_mb": len(html) / 1e6}


def toy_figures() -> dict:
    """DAS on the hierarchical-equality toy, mechpatch and pyvene side by side (pyvene: None when not installed)."""
    import importlib.util
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import das_toy

    t = time.time()
    hf_model, accuracy = das_toy.train()
    out = {"task_accuracy": accuracy, "train_seconds": round(time.time() - t, 1), "k": 4}
    base, source, targets = das_toy.pairs(2000, seed=7)
    has_pyvene = importlib.util.find_spec("pyvene") is not None
    for layer, key in ((0, ""), (1, "after_")):
        r = das_toy.das_mechpatch(hf_model, layer, 4, base, source, targets, 300)
        out[f"{key}iia"], out[f"{key}seconds"] = r.iia, round(r.seconds, 2)
        pv = das_toy.das_pyvene(hf_model, layer, 4, base, source, targets, 300) if has_pyvene else None
        out[f"{key}pyvene_iia"] = None if pv is None else pv["iia"]
        out[f"{key}pyvene_seconds"] = None if pv is None else round(pv["seconds"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    result = {
        "benchmark": "bench_das", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": 1,
                    "torch": torch.__version__},
        "tracr": tracr_figures(), "probe": probe_figures(), "attention": attention_figures(),
        "toy": toy_figures(),
    }
    result["seconds"] = round(time.time() - start, 1)
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
