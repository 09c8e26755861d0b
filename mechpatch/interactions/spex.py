"""The optional SPEX backend: sparse Fourier recovery by aliasing and decoding, through shapiq (``pip install
mechpatch[spex]``).

SPEX (Kang et al. 2025, https://arxiv.org/abs/2502.13870) queries structured masks so that the Fourier
coefficients of the value function alias into a few bins and decodes the sparse set of terms from them;
it needs no order limit and no screening. shapiq's :class:`shapiq.SPEX` returns Shapley-type indices
only (``FBII``, ``SII``, ...; no Moebius), so :class:`_MoebiusSPEX` keeps the Moebius transform that
``Sparse.approximate`` computes before converting it (``_process_moebius``, shapiq 1.4.1, pinned in the
extra). shapiq's coalition ``True`` (player present) is our mask ``True`` (component patched), so that
transform is already our base-corner Moebius ``b(T)``: ``f(z) = sum_{T <= z} b(T)``.

sparse-transform draws its queries from NumPy's global generator: :func:`_numpy_seed` seeds it for the
call and restores it after.
"""

import contextlib
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from mechpatch.interactions.basis import InteractionError, Term

INSTALL = "pip install 'mechpatch[spex]'"


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _spex_class() -> type:
    try:
        from shapiq.approximator.sparse import SPEX
    except ImportError as err:
        raise InteractionError(f"backend='spex' needs shapiq (the spex extra): {INSTALL}") from err

    class _MoebiusSPEX(SPEX):
        captured: dict

        def _process_moebius(self, moebius_transform: dict) -> np.ndarray:
            self.captured = dict(moebius_transform)
            return super()._process_moebius(moebius_transform)

    return _MoebiusSPEX


def spex_moebius(
    game: Callable[[np.ndarray], np.ndarray], n: int, budget: int, max_order: int, seed: int = 0,
    degree: int = 5,
) -> tuple[dict[Term, float], dict]:
    """Recover the base-corner Moebius terms of ``game`` (bool ``[mask, n]`` -> values) with SPEX.

    Args:
        game: the value function on NumPy bool masks (True = patched).
        n: number of components. budget: most masks SPEX may query (it uses the largest design that fits).
        max_order: terms of more components than this are dropped from the result.
        seed: seeds shapiq and sparse-transform's queries. degree: SPEX's ``degree_parameter``.

    Returns:
        (Moebius terms of at most ``max_order`` components, info with ``budget_used`` and the order and
        number of all the terms decoded).
    """
    spex = _spex_class()(n=n, index="FBII", max_order=max_order, random_state=seed, degree_parameter=degree)
    with _numpy_seed(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sparse-transform divides by empty bins
        try:
            iv = spex.approximate(budget, game)
        except ValueError as err:
            raise InteractionError(f"SPEX could not run on {budget} masks over {n} components ({err}); "
                                   "give it a larger budget") from err
    decoded = {tuple(int(i) for i in sorted(t)): float(v) for t, v in spex.captured.items()}
    moebius = {t: v for t, v in decoded.items() if len(t) <= max_order and v != 0.0}
    moebius.setdefault((), 0.0)
    info = {"budget_used": int(iv.estimation_budget), "decoded_terms": len(decoded),
            "decoded_order": max((len(t) for t in decoded), default=0), "degree": spex.degree_parameter}
    return dict(sorted(moebius.items(), key=lambda kv: (len(kv[0]), kv[0]))), info
