"""mechpatch: exact, fast activation patching on TransformerLens 4.

Re-exports the user-facing names only (``__all__``); importing mechpatch does no work and sets no global state,
but for one import at the end: :mod:`mechpatch.display`, the output layer, which gives the result classes their
notebook display (their figures come from the plotting modules, imported only when one is shown).
"""

from mechpatch.cache import SiteCache, cache_activations
from mechpatch.errors import (
    DeviceError,
    EmptyInputError,
    GatedHookError,
    MechpatchError,
    MemoryBudgetError,
    ModelLoadError,
    ShapeMismatchError,
    SiteOutOfRangeError,
    TokenizerError,
    UnknownSiteKindError,
    UnsupportedSiteError,
)
from mechpatch.model import HookedModel, load_model
from mechpatch.prompts import PromptPair, make_pair
from mechpatch.sites import (
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
    Site,
    Value,
    heads,
    layers,
    parse_site,
    select,
)

from mechpatch import display  # noqa: F401  (last: it imports the result modules)

__all__ = [
    "Attn", "DeviceError", "Embed", "EmptyInputError", "GatedHookError", "Head", "HeadResult", "HookedModel", "Key",
    "MechpatchError", "MemoryBudgetError", "Mlp", "ModelLoadError", "ModelSpec", "Neuron", "Pattern", "PosEmbed",
    "PromptPair", "Query", "Resid", "ShapeMismatchError", "Site", "SiteCache", "SiteOutOfRangeError", "TokenizerError",
    "UnknownSiteKindError", "UnsupportedSiteError", "Value", "cache_activations", "heads", "layers", "load_model",
    "make_pair", "parse_site", "select",
]

__version__ = "0.1.0"
