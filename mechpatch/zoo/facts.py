"""A key-value memory trained in a fraction of a second, on groups of training facts with a planted structure.

The data-attribution toy of :mod:`mechpatch.interactions.data`: small enough that thousands of retrainings fit on a
laptop CPU, and built so that its data groups matter in every way data can matter. The model maps a key token to a
value token (an embedding, a ReLU MLP, the value logits: a one-step language model), trained full-batch with Adam on
cross-entropy for a fixed number of steps from a fixed seed. Each training example is a ``(key, value)`` fact; a
*group* is a set of facts, and a retraining keeps some groups and drops the rest.

The behaviour measured is the model's accuracy on the probe keys (the argmax value is the true one), and the mean
log-probability of the true value. A key seen with ``a`` true and ``b`` false copies is answered by the majority once
trained, so the groups behave as follows (:data:`GROUPS`; ``kind`` says what each is for; each structured family
but ``unique`` comes twice, numbered 0 and 1):

- ``unique0`` .. ``unique7``: the only copies of 1 to 4 probe facts: each matters alone (a main effect), in
  proportion to its size.
- ``dup0a`` / ``dup0b``: the same probe facts twice: either suffices, only dropping both costs (redundancy).
- ``half0a`` / ``half0b`` with ``wrong0``: two true copies each of the same facts, against three false copies in
  ``wrong0``: only together do the true copies outvote the false ones (synergy), and ``wrong0`` hurts only while
  one of them is missing.
- ``single0`` with ``mislabel0``: ``single0`` holds one true copy of some facts and ``mislabel0`` two false copies:
  ``mislabel0`` makes the model wrong, so dropping it helps, but only while ``single0`` is there to teach the truth.
- ``filler0`` .. ``filler13``: facts on other keys, never probed (their effects are what sharing one network costs).

>>> len(GROUPS), GROUPS[0].label
(36, 'unique0')
>>> out = train_facts(list(range(len(GROUPS))), seed=0)  # every probe fact right but the 6 that are outvoted
>>> len(PROBE_KEYS), round(out["accuracy"] * len(PROBE_KEYS))
(42, 36)
"""

from dataclasses import dataclass
from collections.abc import Sequence

import torch

#: keys of the facts (probe keys first, then the filler groups' keys) and values they map to
N_KEYS = 96
N_VALUES = 32
#: the sizes (probe facts) of the ``unique`` groups; each other structured family comes ``REPLICAS`` times
UNIQUE_SIZES = (1, 2, 3, 4, 1, 2, 3, 4)
REPLICAS = 2
N_FILLER = 14


@dataclass(frozen=True)
class FactGroup:
    """One data group: its label, what it is for, and its facts ``(key, value)`` (a fact listed twice is two
    training examples)."""

    label: str
    kind: str
    facts: tuple[tuple[int, int], ...]


def _truth(key: int) -> int:
    """The true value of a probe key (a fixed scramble)."""
    return (7 * key + 3) % N_VALUES


def _false(key: int) -> int:
    """The one false value the wrong groups teach for a key."""
    return (_truth(key) + 11) % N_VALUES


def _facts(keys: Sequence[int], copies: int = 1, false: bool = False) -> tuple[tuple[int, int], ...]:
    return tuple((k, _false(k) if false else _truth(k)) for k in keys for _ in range(copies))


def _groups() -> tuple[FactGroup, ...]:
    keys = iter(range(N_KEYS))

    def take(n: int) -> list[int]:
        return [next(keys) for _ in range(n)]

    out = [FactGroup(f"unique{i}", "unique", _facts(take(n))) for i, n in enumerate(UNIQUE_SIZES)]
    for r in range(REPLICAS):
        dup = take(4)
        out += [FactGroup(f"dup{r}a", "redundant", _facts(dup)), FactGroup(f"dup{r}b", "redundant", _facts(dup))]
    for r in range(REPLICAS):
        half = take(4)
        out += [FactGroup(f"half{r}a", "synergy", _facts(half, 2)), FactGroup(f"half{r}b", "synergy", _facts(half, 2)),
                FactGroup(f"wrong{r}", "conflict", _facts(half, 3, false=True))]
    for r in range(REPLICAS):
        single = take(3)
        out += [FactGroup(f"single{r}", "conflict", _facts(single)),
                FactGroup(f"mislabel{r}", "conflict", _facts(single, 2, false=True))]
    first_filler = next(keys)  # the probe keys are 0 .. first_filler - 1
    filler = range(first_filler, N_KEYS)
    gen = torch.Generator().manual_seed(0)
    for i in range(N_FILLER):
        ks = [filler[int(j)] for j in torch.randperm(len(filler), generator=gen)[:6]]
        out.append(FactGroup(f"filler{i}", "filler",
                             tuple((k, int(torch.randint(N_VALUES, (1,), generator=gen))) for k in ks)))
    return tuple(out)


#: the 36 data groups, in component order
GROUPS: tuple[FactGroup, ...] = _groups()
#: the probe keys: every key a non-filler group teaches
PROBE_KEYS: tuple[int, ...] = tuple(sorted({k for g in GROUPS if g.kind != "filler" for k, _ in g.facts}))


def group_labels() -> tuple[str, ...]:
    """The groups' labels, in component order."""
    return tuple(g.label for g in GROUPS)


def _model(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Embedding(N_KEYS, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, N_VALUES))


def train_facts(included: Sequence[int], *, seed: int, steps: int = 200, width: int = 32,
                lr: float = 0.05) -> dict[str, float]:
    """Train the key-value model on the facts of the ``included`` groups (indices into :data:`GROUPS`) and measure it
    on the probe keys.

    The trainer of :func:`mechpatch.interactions.data.data_interactions`: the same ``included`` and ``seed`` give the
    same model, bit for bit, on one machine (one thread, fixed initialisation, full batches). With no group included
    the untrained model is measured.

    Returns:
        ``accuracy`` (share of probe keys whose argmax value is the true one) and ``logprob`` (mean log-probability
        of the true value over the probe keys).
    """
    torch.manual_seed(seed)
    model = _model(width)
    facts = [f for i in sorted(set(included)) for f in GROUPS[i].facts]
    if facts:
        keys = torch.tensor([k for k, _ in facts])
        values = torch.tensor([v for _, v in facts])
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(keys), values).backward()
            opt.step()
    with torch.no_grad():
        probes = torch.tensor(PROBE_KEYS)
        truth = torch.tensor([_truth(k) for k in PROBE_KEYS])
        logits = model(probes)
    return {"accuracy": float((logits.argmax(-1) == truth).double().mean()),
            "logprob": -float(torch.nn.functional.cross_entropy(logits.double(), truth))}


__all__ = ["FactGroup", "GROUPS", "N_KEYS", "N_VALUES", "PROBE_KEYS", "group_labels", "train_facts"]
