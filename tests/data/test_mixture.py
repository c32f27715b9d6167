"""The stateless mixture: exact shares, windows, statelessness, per-language epochs."""

import grain
import numpy as np
import pytest
from scipy import stats

from langtune_jax.data import LanguageMixture, apportion, permute

SIZES = {"en": 500, "es": 200, "qu": 13, "sw": 40, "yo": 7}
WEIGHTS = {"en": 0.45, "es": 0.25, "qu": 0.1, "sw": 0.19, "yo": 0.01}


def _mixture(weights=WEIGHTS, seed=0, **kw) -> LanguageMixture:
    data = {lang: [f"{lang}-{i}" for i in range(n)] for lang, n in SIZES.items()}
    return LanguageMixture({k: data[k] for k in weights}, weights, seed=seed, **kw)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 100, 1000, 4097])
def test_permute_is_a_bijection_and_depends_on_key(n):
    for key in (0, 1, 12345):
        out = permute(np.arange(n), n, key)
        assert np.array_equal(np.sort(out), np.arange(n))
    if n >= 7:
        assert not np.array_equal(permute(np.arange(n), n, 0), permute(np.arange(n), n, 1))


def test_apportion_exact_total_and_tiny_weights_kept():
    # 500, 300, 200 by largest remainder; the two tiny ones take their slot from the largest
    w = apportion([0.5, 0.3, 0.2 - 2e-9, 1e-9, 1e-9], 1000)
    assert w.sum() == 1000 and (w >= 1).all() and list(w) == [498, 300, 200, 1, 1]


def test_chi_square_realised_shares_match_targets():
    m = _mixture()
    n = 20_000
    lang, _ = m.locate(np.arange(n))
    observed = np.bincount(lang, minlength=len(SIZES))
    expected = np.array([WEIGHTS[k] for k in m.languages]) * n
    chi2, p = stats.chisquare(observed, expected)
    assert p > 0.05, (observed, expected)
    # stratified: far tighter than i.i.d. sampling (whose chi2 would be ~ #languages - 1)
    assert chi2 < 0.05
    assert np.abs(observed - expected).max() <= 2


@pytest.mark.parametrize("block", [1, 32])
def test_every_window_has_the_right_proportions(block):
    m = _mixture(block_size=block)
    lang, _ = m.locate(np.arange(40_000))
    p = np.array([m.probabilities[k] for k in m.languages])
    c = np.vstack([np.zeros(len(p)), np.cumsum(np.eye(len(p))[lang], 0)])  # [N+1, L]
    # block-aligned windows of whole blocks (inside a block the order is shuffled)
    for n in (block, 3 * block, 100 * block, 311 * block):
        starts = np.arange(0, len(lang) - n, block)
        dev = np.abs(c[starts + n] - c[starts] - n * p)
        assert dev.max() < (1.5 if block == 1 else 3.0), (n, dev.max(0))
    if block == 1:  # unshuffled: every window, not only aligned ones
        for n in (5, 77, 555):
            assert np.abs(c[n:] - c[:-n] - n * p).max() < 1.5


def test_no_language_starves_even_with_tiny_weight():
    weights = {"en": 1 - 2e-6, "es": 1e-6, "qu": 1e-6}
    assert all(v > 0 for v in _mixture(weights).probabilities.values())
    m = _mixture(weights, period=1 << 12)
    lang, _ = m.locate(np.arange(3 << 12))
    counts = np.bincount(lang, minlength=3)
    assert list(counts[1:]) == [3, 3]  # exactly once per period


def test_stateless_resume_and_processes_agree():
    m = _mixture(block_size=16)
    full = m.locate(np.arange(4096))
    # resume: reading from any start gives the same items
    for start in (0, 1, 1000, 4000):
        part = m.locate(np.arange(start, 4096))
        assert np.array_equal(part[0], full[0][start:])
        assert np.array_equal(part[1], full[1][start:])
    # a fresh object (new process) with the same seed agrees; 2 and 4 processes reading strided
    # shares of the index space reassemble the same global order
    other = _mixture(block_size=16)
    for procs in (1, 2, 4):
        got_l = np.empty(4096, np.int32)
        got_e = np.empty(4096, np.int64)
        for pi in range(procs):
            idx = np.arange(pi, 4096, procs)
            got_l[idx], got_e[idx] = other.locate(idx)
        assert np.array_equal(got_l, full[0]) and np.array_equal(got_e, full[1])
    # item access equals the vectorised core
    assert m[1234] == (m.languages[full[0][1234]], f"{m.languages[full[0][1234]]}-{full[1][1234]}")
    assert not np.array_equal(_mixture(seed=1).locate(np.arange(512))[0], full[0][:512])


def test_per_language_epochs_are_fresh_permutations():
    m = _mixture()
    lang, ex = m.locate(np.arange(30_000))
    for lang_id, name in enumerate(m.languages):
        seq = ex[lang == lang_id]
        n = SIZES[name]
        epochs = len(seq) // n
        assert epochs >= 2, name
        perms = [seq[e * n : (e + 1) * n] for e in range(epochs)]
        for p in perms:  # without replacement inside an epoch
            assert np.array_equal(np.sort(p), np.arange(n))
        if n > 5:
            assert not np.array_equal(perms[0], perms[1])  # a fresh order per epoch


def test_is_a_grain_map_dataset():
    m = _mixture()
    assert isinstance(m, grain.MapDataset) and len(m) > 2**40
    tail = m[10:20]
    assert [tail[i] for i in range(10)] == [m[i] for i in range(10, 20)]
    items = list(m.slice(slice(0, 50)).to_iter_dataset())
    assert items == [m[i] for i in range(50)]
    # indexable far away
    assert m[10**12][0] in SIZES


def test_zero_weight_language_is_never_drawn():
    w = dict(WEIGHTS, yo=0.0)
    lang, _ = _mixture(w).locate(np.arange(10_000))
    assert (lang != list(w).index("yo")).all()


def test_mismatched_weights_are_errors():
    with pytest.raises(ValueError, match="no weight"):
        LanguageMixture({"a": [1], "b": [2]}, {"a": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        LanguageMixture({"a": [1]}, {"a": 0.0})


def test_large_domains_use_a_feistel_bijection():
    n = 300_007  # above the table limit
    out = permute(np.arange(n), n, 42)
    assert np.array_equal(np.sort(out), np.arange(n))
    assert not np.array_equal(out[:100], np.arange(100))
    # pure: a slice of the domain maps as the whole does
    assert np.array_equal(permute(np.arange(1000, 2000), n, 42), out[1000:2000])


def test_bulk_and_per_batch_calls_agree():
    # bulk calls span many epochs/blocks (table stacks); per-batch calls use cached tables
    m = _mixture(block_size=32)
    bulk = m.locate(np.arange(20_000))
    per = [m.locate(np.arange(s, s + 32)) for s in range(0, 20_000, 32)]
    assert np.array_equal(np.concatenate([p[0] for p in per]), bulk[0][: len(per) * 32])
    assert np.array_equal(np.concatenate([p[1] for p in per]), bulk[1][: len(per) * 32])


# ----------------------------------------------------------------------------- weight segments

LATER = {"en": 0.1, "es": 0.2, "qu": 0.3, "sw": 0.2, "yo": 0.2}


def test_segments_with_equal_weights_read_exactly_one_mixture():
    plain = _mixture(block_size=8)
    split = _mixture(block_size=8, segments=[(800, WEIGHTS), (1600, dict(WEIGHTS))])
    idx = np.arange(4000)
    for a, b in zip(plain.locate(idx), split.locate(idx)):
        np.testing.assert_array_equal(a, b)


def test_segments_switch_shares_and_keep_language_epochs_going():
    # block_size 1: draw order is index order, so epochs can be cut from the sequence.
    m = _mixture(segments=[(10_000, LATER)])
    lang, ex = m.locate(np.arange(40_000))
    before = np.bincount(lang[:10_000], minlength=5) / 10_000
    after = np.bincount(lang[10_000:], minlength=5) / 30_000
    names = m.languages
    np.testing.assert_allclose(before, [WEIGHTS[k] for k in names], atol=1e-3)
    np.testing.assert_allclose(after, [LATER[k] for k in names], atol=1e-3)
    # Each language's draws continue its epochs across the switch: no example repeats inside an
    # epoch and no epoch restarts at the boundary.
    for lang_id, name in enumerate(names):
        seq = ex[lang == lang_id]
        n = SIZES[name]
        for e in range(len(seq) // n):
            assert np.array_equal(np.sort(seq[e * n : (e + 1) * n]), np.arange(n)), name
    # The first segment is the unsegmented mixture up to the switch.
    plain = _mixture()
    np.testing.assert_array_equal(plain.locate(np.arange(10_000))[1], ex[:10_000])


def test_segments_are_stateless_under_any_read_order():
    m = _mixture(block_size=4, segments=[(400, LATER), (1200, WEIGHTS)])
    idx = np.arange(2000)
    whole = m.locate(idx)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(idx)
    parts = m.locate(shuffled)
    for a, b in zip(whole, parts):
        np.testing.assert_array_equal(a[shuffled], b)


def test_bad_segment_starts_are_errors():
    with pytest.raises(ValueError, match="multiples of block_size"):
        _mixture(block_size=8, segments=[(12, LATER)])
    with pytest.raises(ValueError, match="must increase"):
        _mixture(segments=[(100, LATER), (50, LATER)])
