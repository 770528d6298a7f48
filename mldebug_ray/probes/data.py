"""The data probe: each split of the run's data streamed once for hashes, near-duplicate signatures, labels and feature samples (issue 11).

Contract of `probes.data_fn` (SPEC §9; imported like `model_fn`, from `probes.code_paths`
or installed packages, never from the run directory):

    data_fn(params: Mapping[str, Any]) -> Mapping[str, Callable[[], Iterable[Batch]]]

maps a split name to a zero-argument callable that returns a FRESH iterator of batches,
so a split can be streamed more than once and never has to fit in memory. Split names:
`train` (or `training`) is the reference; `val`/`validation`, `test`, `production` and
any other name are compared with it. A `Batch` is a mapping with

- `"x"`: a torch tensor `[B, ...]` (floating point: numeric features or pixels; integer:
  token ids) or a list of `B` strings (text);
- `"y"` (optional): integer class labels, a tensor or list `[B]`;
- `"id"` (optional): a list of `B` example ids (str or int); default `"<split>:<index>"`,
  the running index of the example in its split;
- `"features"` (optional): a mapping feature name -> tensor/list `[B]` for the shift
  tests, numeric (numbers) or categorical (strings or booleans). Without it, a 2-D
  floating-point `x` of at most `probes.data.max_default_features` columns gives one
  numeric feature `f{j}` per column, and text gives `n_words`. The labels, when present,
  are always compared too, as the categorical feature `y` (label shift).

`iter_split(split_fn, split)` yields `NormalisedBatch`es (the public form other probes,
e.g. per-class accuracy, iterate); a malformed batch raises `DataProbeError` naming the
split, the batch and the key.

What one pass over a split computes, in memory bounded by a few hundred bytes per
example (the data itself is never held):

- an exact content hash per example: 64 bits of BLAKE2b over the normalised bytes (a
  tensor's dtype, per-example shape and bytes, -0.0 written as 0.0; text NFC-normalised,
  whitespace collapsed to single spaces, lower-cased);
- a near-duplicate signature. Text and token ids: MinHash (Broder 1997) over shingles of
  `shingle_words` consecutive words/tokens, `minhash_perms` permutations, of which the low
  16 bits are kept (b-bit MinHash, Li & König 2010); the similarity is the Jaccard index
  of the two shingle sets, estimated as the share of equal signature entries (corrected
  for the 2^-16 chance agreement). Floating-point tensors: SimHash (Charikar 2002) with
  `simhash_bits` random hyperplanes through the example flattened and centred on its own
  mean; the similarity is the cosine of the two centred vectors (their Pearson
  correlation), estimated as cos(pi * differing bits / bits). Candidates come from LSH
  banding (4 MinHash entries or 32 SimHash bits per band) against an index of the train
  split, so no all-pairs comparison is made; a candidate is a near duplicate when its
  estimated similarity reaches `near_min_jaccard` / `near_min_cosine` (see there why);
- the label counts; per-feature a uniform sample of up to `sample_size` values (bottom-k
  random priorities, seeded), or category counts, from which PSI and a two-sample KS test
  against train are computed once the pass is over;
- a content fingerprint: the count, the sum mod 2^64 and the XOR of per-example hashes
  of content and label (an incremental multiset hash, Clarke et al. 2003): independent of
  order and batch size, changed by any edited, added or removed example.

Tables written (schema.py): `data_splits`, `data_labels`, `data_overlap`, `data_features`.

A rerun on the same out_dir reuses a run's cached tables unless the run directory, the
config or the `data_fn` module changed (fingerprint.py): the data itself is not re-read to
decide. Data that changes behind an unchanged `data_fn` (a bucket refreshed in place) needs
a fresh out_dir; the split fingerprints then tell whether it changed.
"""

from __future__ import annotations

import hashlib
import math
import time
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import polars as pl

from mldebug_ray import schema
from mldebug_ray.errors import ConfigError, MldebugError

if TYPE_CHECKING:
    import torch

Batch = Mapping[str, Any]
SplitFn = Callable[[], Iterable[Batch]]

TRAIN_SPLITS = ("train", "training")
DATA_TABLES = ("data_splits", "data_labels", "data_overlap", "data_features")
LABEL_FEATURE = "y"
_MASK64 = (1 << 64) - 1
_B_BIT_CHANCE = 2.0**-16  # two different 16-bit MinHash values agree by chance this often
_ROWS_PER_BAND_MINHASH = 4  # 4 x 16 bits = one uint64 band key
_BITS_PER_BAND_SIMHASH = 32
_PSI_FLOOR = 1e-4  # an empty bin counts as this share: keeps ln(p/q) finite (common PSI practice)


class DataProbeError(MldebugError):
    """The data probe could not read a split; the message names the split, batch and key."""


@dataclass
class DataProbeConfig:
    """The data probe's settings (keys `probes.data.*`); it runs when `probes.data_fn` is set."""

    max_examples_per_split: int = 0
    """Examples read per split; 0 reads every example."""
    shingle_words: int = 3
    """Words (tokens) per shingle for text MinHash; w-shingles of 3-5 words are the usual choice for
    near-duplicate text (Broder 1997); 3 keeps short texts (a few dozen words) comparable."""
    minhash_perms: int = 64
    """MinHash permutations (a multiple of 4: 4 per LSH band). With 64 the Jaccard estimate has a
    standard deviation of about 0.05 at J = 0.8; 16 bands of 4 find a pair of J = 0.8 with
    probability 1 - (1 - 0.8^4)^16 = 0.9998."""
    near_min_jaccard: float = 0.8
    """Texts whose shingle sets have Jaccard >= this are near duplicates: the threshold of Lee et al.
    2022 ("Deduplicating training data makes language models better", NearDup) and of datasketch's
    MinHashLSH examples; a one-word edit in a 20-word text keeps J about 0.8 with 3-word shingles."""
    simhash_bits: int = 512
    """SimHash hyperplanes (a multiple of 32: 32 bits per band). 16 bands of 32 bits make a pair at
    cosine 0.999 a candidate with probability 1 - (1 - (1 - acos(0.999)/pi)^32)^16 > 0.9999; an
    unrelated pair is one with probability 16 * 2^-32."""
    near_min_cosine: float = 0.999
    """Numeric examples whose centred vectors have cosine >= this are near duplicates: a copy with
    noise at 3% of the example's spread keeps cosine 0.9995. Two unrelated isotropic examples of d
    centred values reach angle acos(0.999) = 0.045 rad with probability of order 0.045^(d-1): about
    1e-19 for 16 values, negligible against the 1e12 pairs of two million-example splits; at 0.99
    it is about 1e-11, i.e. false pairs at that scale. The estimate from 512 bits has a standard
    deviation of about 2.7 differing bits, i.e. cosines 0.9990 and 0.9995 are 2 bits apart: pairs
    right at the threshold are found about half the time."""
    min_near_values: int = 16
    """Numeric examples with fewer values than this get no near-duplicate test (exact only): in a
    handful of dimensions unrelated examples are close by chance (0.045^(d-1) above)."""
    max_candidates_per_example: int = 64
    """Train examples verified per held-out example and band (a boilerplate bucket shared by
    thousands of train examples would otherwise make the check quadratic)."""
    psi_bins: int = 10
    """Bins of the PSI: the deciles of the train sample (the usual scorecard practice, Siddiqi 2006)."""
    sample_size: int = 20000
    """Values kept per split and numeric feature for PSI and KS. With 20,000 per side the PSI of
    two samples of the same distribution is about (bins - 1) * (1/n + 1/m) = 0.001, far below 0.1."""
    max_default_features: int = 64
    """A 2-D numeric `x` wider than this gets no per-column features (pixels are not features)."""
    max_categories: int = 1000
    """Distinct values counted per categorical feature; the rest are pooled as `<other>`."""
    max_ids: int = 100
    """Example ids kept per overlap row of `data_overlap` (the counts are always exact)."""
    seed: int = 0
    """Seed of the hash permutations, hyperplanes and samples: the same data gives the same rows."""

    def __post_init__(self) -> None:
        if self.max_examples_per_split < 0:
            raise ConfigError(f"probes.data.max_examples_per_split must be >= 0, got {self.max_examples_per_split}")
        if not 1 <= self.shingle_words <= 16:
            raise ConfigError(f"probes.data.shingle_words must be in [1, 16], got {self.shingle_words}")
        if self.minhash_perms < 4 or self.minhash_perms % _ROWS_PER_BAND_MINHASH or self.minhash_perms > 1024:
            raise ConfigError(f"probes.data.minhash_perms must be a multiple of 4 in [4, 1024], got {self.minhash_perms}")
        if self.simhash_bits < 32 or self.simhash_bits % _BITS_PER_BAND_SIMHASH or self.simhash_bits > 4096:
            raise ConfigError(f"probes.data.simhash_bits must be a multiple of 32 in [32, 4096], got {self.simhash_bits}")
        if not 0.0 < self.near_min_jaccard <= 1.0:
            raise ConfigError(f"probes.data.near_min_jaccard must be in (0, 1], got {self.near_min_jaccard}")
        if not 0.0 < self.near_min_cosine <= 1.0:
            raise ConfigError(f"probes.data.near_min_cosine must be in (0, 1], got {self.near_min_cosine}")
        if self.min_near_values < 2:
            raise ConfigError(f"probes.data.min_near_values must be >= 2, got {self.min_near_values}")
        if self.max_candidates_per_example < 1:
            raise ConfigError(f"probes.data.max_candidates_per_example must be >= 1, got {self.max_candidates_per_example}")
        if not 2 <= self.psi_bins <= 100:
            raise ConfigError(f"probes.data.psi_bins must be in [2, 100], got {self.psi_bins}")
        if self.sample_size < 100:
            raise ConfigError(f"probes.data.sample_size must be >= 100, got {self.sample_size}")
        if self.max_default_features < 0:
            raise ConfigError(f"probes.data.max_default_features must be >= 0, got {self.max_default_features}")
        if self.max_categories < 2:
            raise ConfigError(f"probes.data.max_categories must be >= 2, got {self.max_categories}")
        if self.max_ids < 0:
            raise ConfigError(f"probes.data.max_ids must be >= 0, got {self.max_ids}")


# ---------------------------------------------------------------------------------------
# The contract: loading the splits and normalising batches
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalisedBatch:
    """One batch of a split in the form every data probe reads."""

    split: str
    offset: int
    """Index (within the split) of the batch's first example."""
    kind: str
    """`numeric` (floating-point tensor), `tokens` (integer tensor) or `text` (list of str)."""
    x: Any
    """The inputs as given: a CPU tensor `[B, ...]` (detached) or a list of B strings."""
    ids: list[str]
    y: "torch.Tensor | None" = None
    """Integer labels, int64 `[B]`, or None."""
    features: dict[str, np.ndarray] = field(default_factory=dict)
    """Feature name -> `[B]` values: float64 for numeric features, object (str) for categorical ones."""

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def texts(self) -> list[str]:
        """Text examples as the exact hash and MinHash see them (`normalise_text`), computed once per batch."""
        return [normalise_text(s) for s in self.x]

    def get(self, key: str, default: Any = None) -> Any:
        """Read like the user's batch: `x`, `y`, `id`, `features`."""
        return {"x": self.x, "y": self.y, "id": self.ids, "features": self.features}.get(key, default)

    def __getitem__(self, key: str) -> Any:
        if key not in ("x", "y", "id", "features"):
            raise KeyError(key)
        return self.get(key)


def is_train_split(name: str) -> bool:
    """Whether `name` names the training split (the reference of every comparison)."""
    return name.strip().lower() in TRAIN_SPLITS


def load_splits(probes: Any, params: Mapping[str, Any], run_dir: Any = None) -> dict[str, SplitFn]:
    """The splits `probes.data_fn(params)` returns, checked against the contract.

    Raises ProbeError (from model_loop) when the entry point cannot be imported, and
    DataProbeError when it fails or returns something other than a mapping of names to
    zero-argument callables.
    """
    from mldebug_ray.probes.model_loop import import_entry_point

    fn = import_entry_point(probes.data_fn, probes.code_paths, run_dir)
    try:
        splits = fn(params)
    except Exception as exc:  # the user's code
        raise DataProbeError(f"{probes.data_fn}: failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(splits, Mapping) or not splits:
        raise DataProbeError(f"{probes.data_fn}: must return a non-empty mapping split name -> callable, got {type(splits).__name__}")
    out: dict[str, SplitFn] = {}
    for name, split_fn in splits.items():
        if not isinstance(name, str) or not name.strip():
            raise DataProbeError(f"{probes.data_fn}: split names must be non-empty strings, got {name!r}")
        if not callable(split_fn):
            raise DataProbeError(f"{probes.data_fn}: split {name!r} must be a zero-argument callable returning an iterable of batches, got {type(split_fn).__name__}")
        out[name] = split_fn
    return out


def iter_split(split_fn: SplitFn, split: str = "data", max_examples: int = 0, max_default_features: int = 64) -> Iterator[NormalisedBatch]:
    """The batches of one split in normalised form, streamed (a fresh iterator per call).

    `split` names the split in default ids and error messages; `max_examples` > 0 stops
    after that many examples (the last batch is cut); `max_default_features` as
    `probes.data.max_default_features`.
    """
    try:
        batches = iter(split_fn())
    except Exception as exc:
        raise DataProbeError(f"split {split!r}: the split's callable failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    offset = 0
    index = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            raise DataProbeError(f"split {split!r}, batch {index}: iterating failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
        nb = normalise_batch(split, batch, offset, index, max_default_features)
        if max_examples and offset + len(nb) > max_examples:
            nb = _head(nb, max_examples - offset)
        if len(nb):
            yield nb
        offset += len(nb)
        index += 1
        if max_examples and offset >= max_examples:
            return


def _head(nb: NormalisedBatch, n: int) -> NormalisedBatch:
    return NormalisedBatch(
        split=nb.split, offset=nb.offset, kind=nb.kind, x=nb.x[:n], ids=nb.ids[:n],
        y=None if nb.y is None else nb.y[:n], features={k: v[:n] for k, v in nb.features.items()},
    )


def normalise_batch(split: str, batch: Batch, offset: int, index: int = 0, max_default_features: int = 64) -> NormalisedBatch:
    """A user batch in normalised form; DataProbeError names the split, batch and key at fault."""
    import torch

    where = f"split {split!r}, batch {index}"
    if not isinstance(batch, Mapping):
        raise DataProbeError(f"{where}: a batch must be a mapping with key 'x', got {type(batch).__name__}")
    if "x" not in batch:
        raise DataProbeError(f"{where}: the batch has no 'x' (keys: {sorted(map(str, batch))[:8]})")
    x = batch["x"]
    if isinstance(x, torch.Tensor):
        if x.dim() < 1:
            raise DataProbeError(f"{where}: 'x' must be a tensor [B, ...], got a scalar")
        x = x.detach().cpu()
        if x.is_complex():
            raise DataProbeError(f"{where}: 'x' has complex dtype {x.dtype}; give real features")
        kind = "numeric" if x.is_floating_point() else "tokens"
        n = int(x.shape[0])
    elif isinstance(x, (list, tuple)) and all(isinstance(s, str) for s in x):
        x = list(x)
        kind = "text"
        n = len(x)
    else:
        raise DataProbeError(f"{where}: 'x' must be a torch tensor [B, ...] or a list of strings, got {type(x).__name__}")
    ids = _ids(where, split, batch.get("id"), n, offset)
    y = _labels(where, batch.get("y"), n)
    features = _features(where, batch.get("features"), n)
    if not features and batch.get("features") is None:
        features = _default_features(x, kind, max_default_features)
    return NormalisedBatch(split=split, offset=offset, kind=kind, x=x, ids=ids, y=y, features=features)


def _ids(where: str, split: str, ids: Any, n: int, offset: int) -> list[str]:
    if ids is None:
        return [f"{split}:{offset + i}" for i in range(n)]
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or len(ids) != n:
        raise DataProbeError(f"{where}: 'id' must be a list of {n} ids (one per example), got {type(ids).__name__} of length {len(ids) if hasattr(ids, '__len__') else '?'}")
    return [str(i) for i in ids]


def _labels(where: str, y: Any, n: int) -> "torch.Tensor | None":
    import torch

    if y is None:
        return None
    try:
        t = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    except Exception:
        raise DataProbeError(f"{where}: 'y' must be integer labels [B], got {type(y).__name__}") from None
    if t.dim() != 1 or t.shape[0] != n:
        raise DataProbeError(f"{where}: 'y' must have shape [{n}] (one integer label per example), got {list(t.shape)}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise DataProbeError(f"{where}: 'y' must hold integer class labels, got non-integral values")
    elif t.dtype == torch.bool or t.is_complex():
        raise DataProbeError(f"{where}: 'y' must hold integer class labels, got dtype {t.dtype}")
    return t.to(torch.int64)


def _features(where: str, features: Any, n: int) -> dict[str, np.ndarray]:
    import torch

    if features is None:
        return {}
    if not isinstance(features, Mapping):
        raise DataProbeError(f"{where}: 'features' must be a mapping name -> values [B], got {type(features).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, values in features.items():
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu()
            if values.dim() != 1 or values.shape[0] != n:
                raise DataProbeError(f"{where}: feature {name!r} must have shape [{n}], got {list(values.shape)}")
            if values.dtype == torch.bool:
                out[str(name)] = np.asarray([str(v) for v in values.tolist()], dtype=object)
            else:
                out[str(name)] = values.to(torch.float64).numpy()
            continue
        if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != n:
            raise DataProbeError(f"{where}: feature {name!r} must be a tensor or list of {n} values")
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in values):
            out[str(name)] = np.asarray(values, dtype=np.float64)
        else:
            out[str(name)] = np.asarray(["<null>" if v is None else str(v) for v in values], dtype=object)
    return out


def _default_features(x: Any, kind: str, max_columns: int) -> dict[str, np.ndarray]:
    """Per-column features of a narrow 2-D numeric x; `n_words` of text; nothing else."""
    if kind == "text":
        return {"n_words": np.asarray([len(s.split()) for s in x], dtype=np.float64)}
    if kind == "numeric" and x.dim() == 2 and 0 < x.shape[1] <= max_columns:
        arr = x.double().numpy()
        return {f"f{j}": arr[:, j] for j in range(x.shape[1])}
    return {}


# ---------------------------------------------------------------------------------------
# Hashes and signatures of one batch
# ---------------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """Text as its exact hash sees it: NFC, whitespace runs collapsed to one space, lower-cased."""
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def _blake64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array: a cheap, well-mixed 64-bit to 64-bit hash."""
    z = np.asarray(z, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def content_hashes(nb: NormalisedBatch) -> np.ndarray:
    """64-bit exact content hash per example (uint64 `[B]`), of the normalised bytes."""
    if nb.kind == "text":
        return np.fromiter(
            (_blake64(b"text\0" + s.encode("utf-8", "surrogatepass")) for s in nb.texts), dtype=np.uint64, count=len(nb.x)
        )
    import torch

    x = nb.x
    if x.is_floating_point():
        x = torch.where(x == 0, torch.zeros_like(x), x)  # -0.0 and 0.0 are the same value
    rows = x.contiguous().view(torch.uint8).reshape(x.shape[0], -1).numpy()
    base = hashlib.blake2b(f"{x.dtype}{list(x.shape[1:])}\0".encode(), digest_size=8)
    digests = []
    for row in rows:
        h = base.copy()
        h.update(row)
        digests.append(h.digest())
    return np.frombuffer(b"".join(digests), dtype="<u8").astype(np.uint64)


def fingerprint_hashes(content: np.ndarray, y: "torch.Tensor | None") -> np.ndarray:
    """Per-example hashes of content and label, the terms of the split's fingerprint."""
    if y is None:
        return splitmix64(content)
    labels = splitmix64(y.numpy().astype(np.int64).view(np.uint64) ^ np.uint64(0x5851F42D4C957F2D))
    return splitmix64(content ^ labels)


@dataclass
class Fingerprint:
    """Order-independent multiset hash of a split: count, sum mod 2^64 and XOR of per-example hashes."""

    n: int = 0
    total: int = 0
    xor: int = 0

    def add(self, hashes: np.ndarray) -> None:
        if hashes.size == 0:
            return
        self.n += int(hashes.size)
        self.total = (self.total + int(np.sum(hashes, dtype=np.uint64))) & _MASK64
        self.xor ^= int(np.bitwise_xor.reduce(hashes))

    def hex(self) -> str:
        return f"{_blake64(f'{self.n}:{self.total}:{self.xor}'.encode()):016x}"


class MinHasher:
    """b-bit MinHash signatures (`perms` x 16 bits) of word or token shingles."""

    def __init__(self, perms: int, shingle: int, seed: int):
        rng = np.random.default_rng([seed, 0x4D48])
        self.perms = perms
        self.shingle = shingle
        self.a = rng.integers(0, 2**64 - 1, size=perms, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, 2**64 - 1, size=perms, dtype=np.uint64, endpoint=True)

    def text_signatures(self, texts: list[str], normalised: bool = False) -> np.ndarray:
        """Signatures of texts (`normalised`: already through `normalise_text`)."""
        texts = texts if normalised else [normalise_text(t) for t in texts]
        words = pl.Series("t", texts, dtype=pl.String).str.split(" ")
        lengths = words.list.len().to_numpy().astype(np.int64)
        flat = words.explode()
        hashes = flat.hash(seed=0x5EED).to_numpy().astype(np.uint64) if flat.len() else np.zeros(0, np.uint64)
        return self.signatures(hashes, lengths)

    def token_signatures(self, tokens: "torch.Tensor") -> np.ndarray:
        import torch

        flat = tokens.reshape(tokens.shape[0], -1).to(dtype=torch.int64).numpy()
        lengths = np.full(flat.shape[0], flat.shape[1], dtype=np.int64)
        return self.signatures(splitmix64(flat.reshape(-1).view(np.uint64)), lengths)

    def signatures(self, word_hashes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """uint16 `[B, perms]`: per row, the low 16 bits of each permutation's minimum over its shingles."""
        n = self.shingle
        out = np.empty((lengths.size, self.perms), dtype=np.uint16)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        n_sh = np.maximum(lengths - n + 1, 1)
        # Rows in chunks so the [perms, shingles] matrix stays near 1M entries (8 MB).
        per_chunk = max(1, (1 << 20) // self.perms)
        row = 0
        while row < lengths.size:
            cum = np.cumsum(n_sh[row:])
            end = row + max(1, int(np.searchsorted(cum, per_chunk, side="right")))
            shingles = self._shingles(word_hashes, lengths[row:end], starts[row:end], n_sh[row:end])
            values = (self.a[:, None] * shingles[None, :] + self.b[:, None]) >> np.uint64(32)
            seg = np.concatenate([[0], np.cumsum(n_sh[row:end])[:-1]]).astype(np.int64)
            mins = np.minimum.reduceat(values, seg, axis=1)
            out[row:end] = (mins & np.uint64(0xFFFF)).astype(np.uint16).T
            row = end
        return out

    def _shingles(self, words: np.ndarray, lengths: np.ndarray, starts: np.ndarray, n_sh: np.ndarray) -> np.ndarray:
        total = int(n_sh.sum())
        rows = np.repeat(np.arange(lengths.size), n_sh)
        pos = np.arange(total) - np.repeat(np.cumsum(n_sh) - n_sh, n_sh)
        acc = np.full(total, 0x243F6A8885A308D3, dtype=np.uint64)
        for k in range(self.shingle):
            p = pos + k
            valid = p < lengths[rows]
            if words.size:
                w = np.where(valid, words[np.where(valid, starts[rows] + p, 0)], np.uint64(0))
            else:
                w = np.zeros(total, dtype=np.uint64)
            acc = splitmix64(acc ^ w)
        return acc


class SimHasher:
    """SimHash signatures (`bits` random-hyperplane signs, packed) of centred numeric examples."""

    _CHUNK = 8192  # hyperplane rows generated per seeded chunk of input dimensions
    _CACHE_BYTES = 64 << 20

    def __init__(self, bits: int, seed: int):
        self.bits = bits
        self.seed = seed
        self._cache: dict[tuple[int, int], Any] = {}

    def _plane_chunk(self, start: int, stop: int) -> "torch.Tensor":
        import torch

        key = (start, stop)
        if key in self._cache:
            return self._cache[key]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + start // self._CHUNK)
        chunk = torch.randn(stop - start, self.bits, generator=g)
        if sum(c.numel() for c in self._cache.values()) * 4 + chunk.numel() * 4 <= self._CACHE_BYTES:
            self._cache[key] = chunk
        return chunk

    def signatures(self, x: "torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
        """(uint8 `[B, bits/8]` packed signs, bool `[B]` valid): constant or non-finite examples are not valid."""
        import torch

        v = x.reshape(x.shape[0], -1).to(torch.float32)
        finite = torch.isfinite(v).all(dim=1)
        v = torch.where(finite[:, None], v, torch.zeros_like(v))
        v = v - v.mean(dim=1, keepdim=True)
        norm = v.norm(dim=1)
        valid = finite & (norm > 1e-6 * (1.0 + x.reshape(x.shape[0], -1).to(torch.float32).abs().nan_to_num(0, 0, 0).amax(dim=1)))
        d = v.shape[1]
        proj = v[:, : self._CHUNK] @ self._plane_chunk(0, min(d, self._CHUNK))
        for start in range(self._CHUNK, d, self._CHUNK):
            stop = min(d, start + self._CHUNK)
            proj += v[:, start:stop] @ self._plane_chunk(start, stop)
        signs = (proj >= 0).numpy()
        return np.packbits(signs, axis=1), valid.numpy()


def band_keys(kind: str, sig: np.ndarray) -> np.ndarray:
    """LSH band keys `[B, bands]` of signatures: 4 MinHash entries (uint64) or 32 SimHash bits (uint32)."""
    sig = np.ascontiguousarray(sig)
    return sig.view(np.uint64) if kind != "numeric" else sig.view(np.uint32)


def similarity(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated similarity of signature pairs (row i of a with row i of b): Jaccard or cosine."""
    if kind == "numeric":
        differing = np.bitwise_count(a ^ b).sum(axis=1, dtype=np.int64)
        return np.cos(np.pi * differing / (a.shape[1] * 8))
    agree = (a == b).mean(axis=1)
    return np.clip((agree - _B_BIT_CHANCE) / (1.0 - _B_BIT_CHANCE), 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# Per-feature samples and the shift statistics
# ---------------------------------------------------------------------------------------


class NumericSample:
    """A uniform sample of up to `size` finite values (bottom-k of random priorities), count and mean."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.rng = rng
        self.values = np.zeros(0, dtype=np.float64)
        self.keys = np.zeros(0, dtype=np.float64)
        self.n = 0
        self.n_nonfinite = 0
        self.total = 0.0

    def add(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        self.n_nonfinite += int((~finite).sum())
        values = values[finite]
        self.n += int(values.size)
        self.total += float(values.sum())
        new_keys = self.rng.random(values.size)
        if self.values.size >= self.size:  # full: only keys under the current k-th smallest can enter
            entering = new_keys < self.keys.max()
            new_keys, values = new_keys[entering], values[entering]
            if values.size == 0:
                return
        keys = np.concatenate([self.keys, new_keys])
        values = np.concatenate([self.values, values])
        if values.size > self.size:
            keep = np.argpartition(keys, self.size - 1)[: self.size]
            keys, values = keys[keep], values[keep]
        self.keys, self.values = keys, values

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


class CategoryCounts:
    """Counts of up to `cap` distinct values; later newcomers pooled as `<other>`."""

    OTHER = "<other>"

    def __init__(self, cap: int):
        self.cap = cap
        self.counts: dict[str, int] = {}
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        uniq, counts = np.unique(values.astype(str), return_counts=True)
        for value, count in zip(uniq.tolist(), counts.tolist()):
            if value not in self.counts and len(self.counts) >= self.cap:
                value = self.OTHER
            self.counts[value] = self.counts.get(value, 0) + count
        self.n += int(values.size)

    def fracs(self) -> dict[str, float]:
        return {k: v / self.n for k, v in self.counts.items()} if self.n else {}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index sum (a - e) ln(a / e) of two share vectors over the same bins,
    each share floored at 1e-4 so an empty bin counts as rare, not impossible."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles 1/bins .. (bins-1)/bins, duplicates dropped
    (a feature with few distinct values gets fewer bins)."""
    if reference.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(reference, np.arange(1, bins) / bins))


def binned_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of `values` in the bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)
    return counts / max(1, values.size)


def numeric_psi(reference: np.ndarray, values: np.ndarray, bins: int) -> float:
    """PSI of `values` against `reference` over the reference's quantile bins; a reference with at
    most `bins` distinct values (counts, flags) gets one bin per value plus one for values it lacks,
    since tied quantiles would otherwise merge them into one bin and hide any move."""
    distinct = np.unique(reference)
    if distinct.size <= bins:
        def shares(v: np.ndarray) -> np.ndarray:
            pos = np.minimum(np.searchsorted(distinct, v), distinct.size - 1)
            slot = np.where(distinct[pos] == v, pos, distinct.size)
            return np.bincount(slot, minlength=distinct.size + 1) / max(1, v.size)

        return psi(shares(reference), shares(values))
    edges = quantile_edges(reference, bins)
    return psi(binned_shares(reference, edges), binned_shares(values, edges))


def kolmogorov_q(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution (Numerical Recipes' `qks`, both series)."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:
        y = math.exp(-(math.pi**2) / (8 * lam * lam))
        s = sum(y ** ((2 * k - 1) ** 2) for k in range(1, 8))
        return min(1.0, max(0.0, 1.0 - math.sqrt(2 * math.pi) / lam * s))
    x = math.exp(-2 * lam * lam)
    return min(1.0, max(0.0, 2 * sum((-1) ** (k - 1) * x ** (k * k) for k in range(1, 8))))


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(D, p): the two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| and its asymptotic
    p-value Q_KS((sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D), ne = n m / (n + m) (Stephens 1970)."""
    a = np.sort(a)
    b = np.sort(b)
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan")
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size - np.searchsorted(b, grid, side="right") / b.size)))
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    return d, kolmogorov_q((en + 0.12 + 0.11 / en) * d)


# ---------------------------------------------------------------------------------------
# One pass over a split, and the index of the train split
# ---------------------------------------------------------------------------------------


class TrainIndex:
    """The train split's exact hashes (sorted, with counts) and LSH band index of its signatures."""

    def __init__(self, split: str, kind: str, exact: np.ndarray, ids: pl.Series | None, sig: np.ndarray | None, valid: np.ndarray | None, x_shape: str | None = None):
        self.split = split
        self.kind = kind
        self.x_shape = x_shape
        self.ids = ids
        self.exact_sorted, self.exact_first, self.exact_count = np.unique(exact, return_index=True, return_counts=True)
        self.sig = None
        if sig is not None and sig.shape[0]:
            # One entry per distinct content: copies of a train example are the same near-duplicate partner.
            keep = np.sort(self.exact_first[valid[self.exact_first]])
            self.near_global = keep
            self.sig = np.ascontiguousarray(sig[keep])
            self.exact_of_near = exact[keep]
            keys = band_keys(kind, self.sig)
            index_type = np.int32 if keys.shape[0] < 2**31 else np.int64  # half the memory of argsort's int64
            self.band_order = [np.argsort(keys[:, j], kind="stable").astype(index_type) for j in range(keys.shape[1])]
            self.band_sorted = [keys[order, j] for j, order in enumerate(self.band_order)]

    def id_of(self, index: np.ndarray) -> list[str]:
        if self.ids is None:
            return [f"{self.split}:{i}" for i in index.tolist()]
        return self.ids.gather(pl.Series(index.astype(np.int64))).to_list()


@dataclass
class OverlapCount:
    """Matches of one held-out split against train, of one kind (exact or near)."""

    n_pairs: int = 0
    n_examples: int = 0
    ids_a: list[str] = field(default_factory=list)
    ids_b: list[str] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)
    similarity_min: float | None = None

    def add(self, index: TrainIndex, train_idx: np.ndarray, held_ids: list[str], sims: np.ndarray, n_pairs: int, cap: int) -> None:
        """`train_idx`, `held_ids`, `sims`: the best train partner of each matched held-out example."""
        self.n_pairs += int(n_pairs)
        self.n_examples += len(held_ids)
        if sims.size:
            low = float(sims.min())
            self.similarity_min = low if self.similarity_min is None else min(self.similarity_min, low)
        room = cap - len(self.ids_b)
        if room > 0 and held_ids:
            self.ids_b.extend(held_ids[:room])
            self.ids_a.extend(index.id_of(train_idx[:room]))
            self.similarities.extend(float(s) for s in sims[:room])


@dataclass
class SplitScan:
    """What one pass over a split found."""

    name: str
    role: str
    status: str = "ok"
    reason: str | None = None
    kind: str | None = None
    x_shape: str | None = None
    fingerprint: Fingerprint = field(default_factory=Fingerprint)
    labels: dict[int, int] = field(default_factory=dict)
    n_labelled: int = 0
    n_duplicates: int = 0
    numeric: dict[str, NumericSample] = field(default_factory=dict)
    categorical: dict[str, CategoryCounts] = field(default_factory=dict)
    exact: OverlapCount | None = None
    near: OverlapCount | None = None
    near_skipped: str | None = None
    read_time_s: float = 0.0


class DataScanner:
    """Streams splits one by one: the train split first (it becomes the index), then the others."""

    def __init__(self, cfg: DataProbeConfig):
        self.cfg = cfg
        self.minhash = MinHasher(cfg.minhash_perms, cfg.shingle_words, cfg.seed)
        self.simhash = SimHasher(cfg.simhash_bits, cfg.seed)
        self.rng = np.random.default_rng([cfg.seed, 0x5A3])

    def signatures(self, nb: NormalisedBatch) -> tuple[np.ndarray, np.ndarray]:
        if nb.kind == "text":
            return self.minhash.text_signatures(nb.texts, normalised=True), np.ones(len(nb), dtype=bool)
        if nb.kind == "tokens":
            return self.minhash.token_signatures(nb.x), np.ones(len(nb), dtype=bool)
        return self.simhash.signatures(nb.x)

    @staticmethod
    def comparable(index: TrainIndex, kind: str | None, x_shape: str | None) -> bool:
        """Whether a split's signatures can be compared with the train index's (numeric: the same shape, so the same hyperplanes)."""
        return index.sig is not None and index.kind == kind and (kind != "numeric" or index.x_shape == x_shape)

    def near_applies(self, nb: NormalisedBatch) -> bool:
        """Whether the near-duplicate test applies to this batch's examples (numeric: wide enough)."""
        return nb.kind != "numeric" or math.prod(nb.x.shape[1:]) >= self.cfg.min_near_values

    def near_threshold(self, kind: str) -> float:
        return self.cfg.near_min_cosine if kind == "numeric" else self.cfg.near_min_jaccard

    def method(self, kind: str | None, what: str) -> str:
        if what == "exact":
            return "blake2b-64 of normalised content"
        if kind == "numeric":
            return f"simhash-{self.cfg.simhash_bits} cosine of centred vectors"
        unit = "token" if kind == "tokens" else "word"
        return f"minhash-{self.cfg.minhash_perms}x16bit jaccard of {self.cfg.shingle_words}-{unit} shingles"

    def scan(self, name: str, split_fn: SplitFn, index: TrainIndex | None, build_index: bool) -> tuple[SplitScan, TrainIndex | None]:
        """One pass over split `name`: its summary, and the train index when `build_index`.

        A split that fails mid-way is returned with status `error` and its reason; what it
        found before the failure is dropped (a partial split would fake shift and overlap).
        """
        started = time.perf_counter()
        scan = SplitScan(name=name, role="train" if build_index else "held_out")
        exact_parts: list[np.ndarray] = []
        id_parts: list[pl.Series] = []
        sig_parts: list[np.ndarray] = []
        valid_parts: list[np.ndarray] = []
        try:
            if index is not None:
                scan.exact, scan.near = OverlapCount(), OverlapCount()
            for nb in iter_split(split_fn, name, self.cfg.max_examples_per_split, self.cfg.max_default_features):
                shape = str(list(nb.x.shape[1:])) if nb.kind != "text" else "text"
                if scan.kind is None:
                    scan.kind, scan.x_shape = nb.kind, shape
                elif nb.kind != scan.kind or (nb.kind == "numeric" and shape != scan.x_shape):
                    raise DataProbeError(f"split {name!r}, examples from {nb.offset}: 'x' is {nb.kind} {shape}, earlier batches were {scan.kind} {scan.x_shape}")
                elif shape != scan.x_shape:
                    scan.x_shape = "varying"  # token sequences padded per batch
                exact = content_hashes(nb)
                exact_parts.append(exact)
                scan.fingerprint.add(fingerprint_hashes(exact, nb.y))
                self._labels(scan, nb)
                self._features(scan, nb)
                need_sig = (build_index or (index is not None and self.comparable(index, nb.kind, shape))) and self.near_applies(nb)
                sig, valid = self.signatures(nb) if need_sig else (None, None)
                if build_index:
                    if sig is not None:
                        sig_parts.append(sig)
                        valid_parts.append(valid)
                    if id_parts or nb.ids[0] != f"{name}:{nb.offset}" or nb.ids[-1] != f"{name}:{nb.offset + len(nb) - 1}":
                        if not id_parts and nb.offset:  # the default ids of the batches before the first given ones
                            id_parts.append(pl.Series("id", [f"{name}:{i}" for i in range(nb.offset)], dtype=pl.String))
                        id_parts.append(pl.Series("id", nb.ids, dtype=pl.String))
                if index is not None:
                    self._match(scan, index, nb, exact, sig, valid)
        except Exception as exc:  # the user's data: this split only
            reason = str(exc) if isinstance(exc, DataProbeError) else f"split {name!r}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            return SplitScan(name=name, role=scan.role, status="error", reason=reason, read_time_s=time.perf_counter() - started), None
        all_exact = np.concatenate(exact_parts) if exact_parts else np.zeros(0, dtype=np.uint64)
        scan.n_duplicates = int(all_exact.size - np.unique(all_exact).size)
        if index is not None and (index.kind != scan.kind or (scan.kind == "numeric" and index.x_shape != scan.x_shape)):
            scan.near_skipped = f"{name} is {scan.kind} {scan.x_shape}, {index.split} is {index.kind} {index.x_shape}: no near-duplicate comparison"
        elif index is not None and index.sig is None:
            scan.near_skipped = f"{index.split} has examples of fewer than probes.data.min_near_values={self.cfg.min_near_values} values: exact duplicates only"
        built = None
        if build_index:
            ids = pl.concat(id_parts) if id_parts else None
            sig = np.concatenate(sig_parts) if sig_parts else None
            valid = np.concatenate(valid_parts) if valid_parts else None
            built = TrainIndex(name, scan.kind or "numeric", all_exact, ids, sig, valid, scan.x_shape)
        scan.read_time_s = time.perf_counter() - started
        return scan, built

    def _labels(self, scan: SplitScan, nb: NormalisedBatch) -> None:
        if nb.y is None:
            return
        y = nb.y.numpy()
        values, counts = np.unique(y, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            scan.labels[v] = scan.labels.get(v, 0) + c
        scan.n_labelled += int(y.size)
        self._add_feature(scan, LABEL_FEATURE, y.astype(str).astype(object))

    def _features(self, scan: SplitScan, nb: NormalisedBatch) -> None:
        for name, values in nb.features.items():
            if name == LABEL_FEATURE:
                raise DataProbeError(f"split {scan.name!r}: feature name {LABEL_FEATURE!r} is reserved for the labels")
            self._add_feature(scan, name, values)

    def _add_feature(self, scan: SplitScan, name: str, values: np.ndarray) -> None:
        categorical = values.dtype == object
        if (categorical and name in scan.numeric) or (not categorical and name in scan.categorical):
            raise DataProbeError(f"split {scan.name!r}: feature {name!r} is numeric in some batches and categorical in others")
        if categorical:
            scan.categorical.setdefault(name, CategoryCounts(self.cfg.max_categories)).add(values)
        else:
            scan.numeric.setdefault(name, NumericSample(self.cfg.sample_size, self.rng)).add(values)

    def _match(self, scan: SplitScan, index: TrainIndex, nb: NormalisedBatch, exact: np.ndarray, sig: np.ndarray | None, valid: np.ndarray | None) -> None:
        cap = self.cfg.max_ids
        pos = np.searchsorted(index.exact_sorted, exact)
        pos_c = np.minimum(pos, max(0, index.exact_sorted.size - 1))
        hit = (pos < index.exact_sorted.size) & (index.exact_sorted[pos_c] == exact) if index.exact_sorted.size else np.zeros(exact.size, bool)
        rows = np.flatnonzero(hit)
        if rows.size:
            scan.exact.add(index, index.exact_first[pos_c[rows]], [nb.ids[i] for i in rows.tolist()], np.ones(rows.size), index.exact_count[pos_c[rows]].sum(), cap)
        if sig is None or index.sig is None or index.sig.shape[0] == 0:
            return
        candidates = np.flatnonzero(valid & ~hit)
        if candidates.size == 0:
            return
        keys = band_keys(nb.kind, sig[candidates])
        held_parts, train_parts = [], []
        limit = self.cfg.max_candidates_per_example
        for j in range(keys.shape[1]):
            sorted_keys = index.band_sorted[j]
            # Sorted needles: each binary search starts where the last one ended (about 2x faster on 1M keys).
            order = np.argsort(keys[:, j])
            lo = np.empty(order.size, dtype=np.int64)
            lo[order] = np.searchsorted(sorted_keys, keys[order, j], side="left")
            found = sorted_keys[np.minimum(lo, sorted_keys.size - 1)] == keys[:, j]
            if not found.any():  # the common case: one binary search per key, no second one
                continue
            n = np.zeros(lo.size, dtype=np.int64)
            n[found] = np.minimum(np.searchsorted(sorted_keys, keys[found, j], side="right") - lo[found], limit)
            held = np.repeat(np.arange(candidates.size), n)
            offsets = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            held_parts.append(held)
            train_parts.append(index.band_order[j][np.repeat(lo, n) + offsets])
        if not held_parts:
            return
        pairs = np.unique(np.stack([np.concatenate(held_parts), np.concatenate(train_parts)], axis=1), axis=0)
        sims = similarity(nb.kind, sig[candidates[pairs[:, 0]]], index.sig[pairs[:, 1]])
        keep = sims >= self.near_threshold(nb.kind)
        if not keep.any():
            return
        pairs, sims = pairs[keep], sims[keep]
        # The best partner of each matched held-out example (pairs are sorted by held-out row).
        order = np.lexsort((-sims, pairs[:, 0]))
        pairs, sims = pairs[order], sims[order]
        first = np.concatenate([[True], pairs[1:, 0] != pairs[:-1, 0]])
        held_rows = candidates[pairs[first, 0]]
        scan.near.add(index, index.near_global[pairs[first, 1]], [nb.ids[i] for i in held_rows.tolist()], sims[first], pairs.shape[0], cap)


# ---------------------------------------------------------------------------------------
# The run's data tables
# ---------------------------------------------------------------------------------------


def probe_data(run_id: str, params: Mapping[str, Any], probes: Any, run_dir: Any, problems: list[str]) -> dict[str, pl.DataFrame]:
    """The data tables (DATA_TABLES) of one run from `probes.data_fn(params)`; empty when it
    cannot run. A split that fails is a `data_splits` row with status `error`; the others go on."""
    from mldebug_ray.probes.model_loop import ProbeError

    tables = {name: schema.empty(name) for name in DATA_TABLES}
    try:
        splits = load_splits(probes, params, run_dir)
    except (ProbeError, DataProbeError) as exc:
        problems.append(f"data probe: {exc}")
        return tables
    return data_tables(run_id, splits, probes.data, problems)


def data_tables(run_id: str, splits: Mapping[str, SplitFn], cfg: DataProbeConfig, problems: list[str]) -> dict[str, pl.DataFrame]:
    """Scan `splits` (train first) and build the four data tables."""
    scanner = DataScanner(cfg)
    train_name = next((name for name in splits if is_train_split(name)), None)
    order = ([train_name] if train_name else []) + [name for name in splits if name != train_name]
    scans: list[SplitScan] = []
    index: TrainIndex | None = None
    for name in order:
        is_train = name == train_name
        scan, built = scanner.scan(name, splits[name], None if is_train else index, build_index=is_train)
        if scan.status != "ok":
            problems.append(f"data probe: {scan.reason}")
        if scan.near_skipped and "min_near_values" not in scan.near_skipped:
            problems.append(f"data probe: {scan.near_skipped}")
        if is_train:
            index = built
        scans.append(scan)
    train = scans[0] if train_name and scans and scans[0].status == "ok" else None
    if train_name is None:
        problems.append(f"data probe: no train split (one of {', '.join(TRAIN_SPLITS)}) among {sorted(splits)}: no overlap or shift tests")
    return {
        "data_splits": _frame("data_splits", run_id, [_split_row(s) for s in scans]),
        "data_labels": _frame("data_labels", run_id, _label_rows(scans)),
        "data_overlap": _frame("data_overlap", run_id, _overlap_rows(scanner, scans, train) if train else []),
        "data_features": _frame("data_features", run_id, _feature_rows(cfg, scans, train) if train else []),
    }


def _frame(table: str, run_id: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    if not rows:
        return schema.empty(table)
    columns = schema.schema_of(table)
    frame = pl.DataFrame([{"run_id": run_id, **r} for r in rows], schema={k: columns[k] for k in ["run_id", *rows[0]]}, strict=False)
    return schema.validate(table, frame)


def _split_row(scan: SplitScan) -> dict[str, Any]:
    row: dict[str, Any] = {
        "split": scan.name, "role": scan.role, "status": scan.status, "reason": scan.reason, "kind": None, "x_shape": None,
        "n_examples": None, "n_duplicate_examples": None, "n_labelled": None, "n_classes": None, "max_class_count": None,
        "min_class_count": None, "imbalance_ratio": None, "n_features": None, "fingerprint": None, "read_time_s": scan.read_time_s,
    }
    if scan.status != "ok":
        return row
    counts = [c for c in scan.labels.values() if c > 0]
    row.update(
        kind=scan.kind, x_shape=scan.x_shape, n_examples=scan.fingerprint.n, n_duplicate_examples=scan.n_duplicates,
        n_labelled=scan.n_labelled, n_classes=len(counts), n_features=len(scan.numeric) + len(scan.categorical) - (1 if scan.labels else 0),
        fingerprint=scan.fingerprint.hex(),
    )
    if counts:
        row.update(max_class_count=max(counts), min_class_count=min(counts), imbalance_ratio=max(counts) / min(counts))
    return row


def _label_rows(scans: list[SplitScan]) -> list[dict[str, Any]]:
    labelled = [s for s in scans if s.status == "ok" and s.n_labelled]
    classes = sorted({label for s in labelled for label in s.labels})
    return [
        {"split": s.name, "label": label, "count": s.labels.get(label, 0), "frac": s.labels.get(label, 0) / s.n_labelled}
        for s in labelled
        for label in classes
    ]


def _overlap_rows(scanner: DataScanner, scans: list[SplitScan], train: SplitScan) -> list[dict[str, Any]]:
    rows = []
    for scan in scans[1:]:
        if scan.status != "ok" or scan.exact is None:
            continue
        n_b = scan.fingerprint.n
        found = [("exact", scan.exact, 1.0)]
        if not scan.near_skipped:
            found.append(("near", scan.near, scanner.near_threshold(scan.kind or "numeric")))
        for kind, overlap, threshold in found:
            rows.append({
                "split_a": train.name, "split_b": scan.name, "kind": kind, "method": scanner.method(scan.kind, kind), "threshold": threshold,
                "n_pairs": overlap.n_pairs, "n_examples_b": overlap.n_examples, "n_b": n_b,
                "overlap_frac": overlap.n_examples / n_b if n_b else None,
                "example_ids_a": overlap.ids_a, "example_ids_b": overlap.ids_b, "similarities": overlap.similarities,
                "similarity_min": overlap.similarity_min,
            })
    return rows


def _feature_rows(cfg: DataProbeConfig, scans: list[SplitScan], train: SplitScan) -> list[dict[str, Any]]:
    rows = []
    for scan in scans[1:]:
        if scan.status != "ok":
            continue
        for name, sample in scan.numeric.items():
            ref = train.numeric.get(name)
            if ref is None or ref.values.size == 0 or sample.values.size == 0:
                continue
            d, p = ks_two_sample(ref.values, sample.values)
            rows.append({
                "split": scan.name, "reference_split": train.name, "feature": name, "feature_kind": "numeric", "n_ref": ref.n, "n": sample.n,
                "psi": numeric_psi(ref.values, sample.values, cfg.psi_bins), "ks_stat": d, "ks_p": p,
                "mean_ref": ref.mean, "mean": sample.mean,
            })
        for name, counts in scan.categorical.items():
            ref = train.categorical.get(name)
            if ref is None or ref.n == 0 or counts.n == 0:
                continue
            a, b = ref.fracs(), counts.fracs()
            categories = sorted(set(a) | set(b))
            ea, eb = np.array([a.get(c, 0.0) for c in categories]), np.array([b.get(c, 0.0) for c in categories])
            top = int(np.argmax(np.abs(eb - ea)))
            rows.append({
                "split": scan.name, "reference_split": train.name, "feature": name, "feature_kind": "categorical", "n_ref": ref.n, "n": counts.n,
                "psi": psi(ea, eb), "top_category": categories[top], "top_category_ref_frac": float(ea[top]), "top_category_frac": float(eb[top]),
            })
    n_tests = sum(1 for r in rows if r.get("ks_p") is not None and not math.isnan(r["ks_p"]))
    for r in rows:
        if r.get("ks_p") is not None and not math.isnan(r["ks_p"]):
            r["ks_p_adjusted"] = min(1.0, r["ks_p"] * n_tests)
    return rows
