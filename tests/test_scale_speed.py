"""Work the compress pipeline no longer repeats (issue 13), each checked to leave the results
as they were: the ratio search's mixed try reads back the layers its two tries built, kept
calibration statistics carry a layer's H and factors from one visit to the next, and
weight-space ``auto`` takes pruning's and sparse + low rank's errors from what they dropped."""

import os

import numpy as np
import pytest

from helpers import correlated_inputs, twelve_layer_model
from weightpress.compression import methods as M
from weightpress.compression.calibration import CalibrationSet, CalibrationStats, _held_bytes
from weightpress.compression.matrices import fro2


@pytest.fixture()
def model(tmp_path):
    """Twelve small layers of three widths with calibration inputs (the ratio search needs
    three tries on them: one ratio for all jumps over the target both ways)."""
    return twelve_layer_model(tmp_path)


def _compress(mp, out, cal, **kw):
    from weightpress.model.compress import compress_model, open_source

    with open_source(mp) as src:
        return compress_model(src, out, ratio=4, method="quant", calibration=cal, min_size=16,
                              **kw)


def test_the_mixed_try_reads_back_what_the_first_two_built(model, tmp_path, monkeypatch):
    import weightpress.model.compress as mc

    monkeypatch.setattr(mc, "ALT_STEP", 0.0)  # no steps up: the two-sided search
    mp, cp = model
    builds, tries = [], []
    real_build, real_exec = mc._build_layer, mc.execute
    monkeypatch.setattr(mc, "_build_layer", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    monkeypatch.setattr(mc, "execute", lambda *a, **k: tries.append(k.get("layer_ratio"))
                        or real_exec(*a, **k))
    out = str(tmp_path / "o.wpz")
    rep = _compress(mp, out, CalibrationSet(cp, keep_bytes=0))
    assert len(tries) == 3 and isinstance(tries[2], dict)  # bracket, bracket, mix
    assert len(builds) == 2 * 12  # the mix built nothing: every layer at a budget tried before
    assert 0.99 * 4 <= rep.ratio <= 1.03 * 4
    # the scratch store and the tries' files are gone
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors", "m.safetensors", "o.wpz"]
    # and the file is the one a run with a journal (which reuses layers the same way) writes
    out2 = str(tmp_path / "o2.wpz")
    _compress(mp, out2, CalibrationSet(cp, keep_bytes=0), journal=True)
    with open(out, "rb") as a, open(out2, "rb") as b:
        assert a.read() == b.read()


def _output_rms(mp, cp, out):
    """The parameter-weighted RMS of the layers' relative output errors (the allocation's
    objective), measured here from the file."""
    from weightpress.compression.calibration import output_error
    from weightpress.model.compress import open_source
    from weightpress.model.container import Container

    num = tot = 0.0
    with open_source(mp) as src, open_source(cp) as cal, Container(out) as c:
        for n in cal.info():
            W = np.asarray(src[n], np.float64)
            num += W.size * output_error(W, np.asarray(c[n], np.float64),
                                          CalibrationStats.from_inputs(cal[n])) ** 2
            tot += W.size
    return float(np.sqrt(num / tot))


def test_first_try_steps_up_reach_the_target_with_one_tries_builds(model, tmp_path, monkeypatch):
    """The first try also stages each quantized layer one step up; the file it writes is too
    small, and the second try moves layers up that step: every layer is built once (the
    second try builds nothing), the window is met, and the outputs err as little as the
    two-sided search's (which builds every layer twice)."""
    import weightpress.model.compress as mc

    mp, cp = model
    builds, tries = [], []
    real_build, real_exec = mc._build_layer, mc.execute
    monkeypatch.setattr(mc, "_build_layer", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    monkeypatch.setattr(mc, "execute", lambda *a, **k: tries.append(k) or real_exec(*a, **k))
    out = str(tmp_path / "o.wpz")
    rep = _compress(mp, out, CalibrationSet(cp, keep_bytes=0))
    assert len(tries) == 2 and tries[0]["alt"] is None
    moved = tries[1]["alt"]
    assert isinstance(moved, dict) and 0 < len(moved) < 12  # some layers, not all, a step up
    assert tries[1]["layer_ratio"] == tries[0]["layer_ratio"]
    assert len(builds) == 12  # one try's builds
    assert 0.99 * 4 <= rep.ratio <= 1.03 * 4
    assert not rep.alternatives  # (only a first try's report has them)
    # the moved layers are the ones built a step up: bigger than the first try's, same form
    bytes_of = {r.name: r.nbytes for r in rep.rows}
    assert all(bytes_of[n] > 0 for n in moved)
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors", "m.safetensors", "o.wpz"]
    # a run with a journal (which the tries' steps up go through the same way) writes the same
    out2 = str(tmp_path / "o2.wpz")
    _compress(mp, out2, CalibrationSet(cp, keep_bytes=0), journal=True)
    with open(out, "rb") as a, open(out2, "rb") as b:
        assert a.read() == b.read()
    # quality: as low an output error as the search without steps up (three tries)
    monkeypatch.setattr(mc, "ALT_STEP", 0.0)
    builds.clear()
    out3 = str(tmp_path / "o3.wpz")
    rep3 = _compress(mp, out3, CalibrationSet(cp, keep_bytes=0))
    assert len(builds) == 24 and 0.99 * 4 <= rep3.ratio <= 1.03 * 4
    assert _output_rms(mp, cp, out) <= 1.05 * _output_rms(mp, cp, out3)


def test_a_step_up_is_what_its_budget_builds(model):
    """``_alt``: the build at a byte budget also carries the quantization the budget alt
    times larger builds (the same bits as building it there), which is larger and errs
    less; at most two GPTQ results are held."""
    from weightpress.compression.aware import _MEMO, compress_aware
    from weightpress.io import open_model

    mp, cp = model
    with open_model(mp) as src, open_model(cp) as cal:
        W, X = np.asarray(src["l2.weight"]), np.asarray(cal["l2.weight"])
    nb = W.nbytes / 4  # int6 variants fit; int8 ones fit 1.1 x that
    _MEMO.clear()
    st = CalibrationStats.from_inputs(X)
    q = compress_aware(W, st, "quant", nbytes=nb, options={"_alt": 1.1})
    held = [k for k in st._cache if k[0] == "gptq"]
    assert len(held) <= 2
    nb_alt, up = q._wp_alt
    assert nb_alt == nb * 1.1 and nb < up.nbytes <= nb_alt and q.nbytes <= nb
    _MEMO.clear()
    ref = compress_aware(W, CalibrationStats.from_inputs(X), "quant", nbytes=nb_alt)
    assert ref.name == up.name
    np.testing.assert_array_equal(ref.toarray(), up.toarray())
    assert ref._wp_predicted == up._wp_predicted < q._wp_predicted
    # without _alt: no step up, and the same build at nb
    _MEMO.clear()
    plain = compress_aware(W, CalibrationStats.from_inputs(X), "quant", nbytes=nb)
    assert not hasattr(plain, "_wp_alt")
    np.testing.assert_array_equal(plain.toarray(), q.toarray())


def test_mix_up_moves_the_most_error_removed_per_byte_within_the_target():
    from weightpress.model.compress import _mix_up
    from weightpress.model.report import Report, Row

    rows = [Row(f"l{i}", (10, 10), "int6", 100, 100, 400, 0.0, "", 0.4) for i in range(4)]
    alts = {"l0": {"budget": 210.0, "bytes": 200, "error": 0.1},   # 15 per 100 bytes
            "l1": {"budget": 160.0, "bytes": 150, "error": 0.39},  # 0.79 per 50
            "l2": {"budget": 310.0, "bytes": 300, "error": 0.2},   # 12 per 200
            "l3": {"budget": 90.0, "bytes": 90, "error": 0.3}}     # smaller: never a step up
    rep = Report(rows, 1000, 4000, alternatives=alts)
    assert _mix_up(rep, 1300) == {"l0": ("quant", 210.0), "l2": ("quant", 310.0)}
    # l2 no longer fits after l0; a dense step up (no error left) has its own form
    alts["l1"] = {"form": "dense", "budget": 400.0, "bytes": 150, "error": 0.0}
    assert _mix_up(rep, 1250) == {"l0": ("quant", 210.0), "l1": ("dense", 400.0)}
    assert _mix_up(rep, 1000) is None  # no room
    assert _mix_up(Report(rows, 1000, 4000), 1300) is None  # no steps up


def test_kept_statistics_write_the_same_file_and_compute_h_once(model, tmp_path, monkeypatch):
    mp, cp = model
    out0, out1 = str(tmp_path / "a.wpz"), str(tmp_path / "b.wpz")
    _compress(mp, out0, CalibrationSet(cp, keep_bytes=0))
    made = []
    real = CalibrationStats.from_inputs.__func__

    def counting(cls, X, **k):
        made.append(1)
        return real(cls, X, **k)

    monkeypatch.setattr(CalibrationStats, "from_inputs", classmethod(counting))
    cal = CalibrationSet(cp, keep_bytes=512 << 20)  # opted in (the default keeps none: memory)
    _compress(mp, out1, cal)
    assert len(made) == 12  # three tries, one H per layer
    with open(out0, "rb") as a, open(out1, "rb") as b:
        assert a.read() == b.read()
    assert sum(cal._kept_sizes.values()) <= cal.keep_bytes
    assert all(st.keep_factors for st in cal._kept.values())


def test_keep_bytes_bounds_what_is_kept(tmp_path):
    rng = np.random.default_rng(0)
    X = {f"l{i}": rng.standard_normal((64, 32)).astype(np.float32) for i in range(6)}
    one = _held_bytes(CalibrationStats.from_inputs(X["l0"]))
    assert one == 32 * 32 * 4
    cal = CalibrationSet(X, keep_bytes=3 * one)
    first = [cal[n] for n in X]
    assert len(cal._kept) == 3 and sum(cal._kept_sizes.values()) <= 3 * one
    again = [cal[n] for n in X]
    assert [a is b for a, b in zip(first, again)] == [True] * 3 + [False] * 3
    assert cal["l5"] is again[5]  # (asked again for the same layer: the last one is held)
    none = CalibrationSet(X, keep_bytes=0)
    a = none["l0"]
    none["l1"]
    assert none["l0"] is not a and not a.keep_factors
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WP_CALIBRATION_KEEP_MB", "0.5")
        assert CalibrationSet(X).keep_bytes == 1 << 19


def test_kept_factors_give_the_same_forms():
    """A kept layer caches its factors (obs_factor) instead of factoring H in place: the
    sweeps see the same factor, bit for bit."""
    from weightpress.compression.aware import compress_aware

    rng = np.random.default_rng(3)
    W = (rng.standard_normal((48, 64)) / 8).astype(np.float32)
    X = correlated_inputs(rng, 300, 64).astype(np.float32)
    for method in ("prune", "quant", "lowrank"):
        a = compress_aware(W, CalibrationStats.from_inputs(X), method, nbytes=W.nbytes / 5)
        st = CalibrationStats.from_inputs(X)
        st.keep_factors = True
        b = compress_aware(W, st, method, nbytes=W.nbytes / 5)
        c = compress_aware(W, st, method, nbytes=W.nbytes / 5)  # from what the first cached
        for m in (b, c):
            pa, pb = a.parts(), m.parts()
            assert pa.keys() == pb.keys()
            assert all(np.array_equal(pa[k], pb[k]) for k in pa)
        assert any(k[0] in ("obs", "gram") for k in st._cache if isinstance(k, tuple))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auto_errors_from_what_was_dropped_are_the_measured_ones(dtype):
    rng = np.random.default_rng(1)
    W = ((rng.standard_normal((96, 40)) @ rng.standard_normal((40, 128))) / 20
         + rng.standard_normal((96, 128)) / 50).astype(dtype)
    nb = W.nbytes / 3
    p = M.magnitude_prune(W, nbytes=nb)
    assert M._pruned_error(W, p, fro2(W)) == pytest.approx(p.relative_error(W), rel=1e-6)
    for r in (4, 10):
        c = M.sparse_plus_low_rank(W, r, nbytes=nb)
        assert c._wp_rel_error == pytest.approx(c.relative_error(W), rel=1e-5)
    if dtype == np.float32:  # values narrowed on storage: no shortcut, measured
        assert M._pruned_error(W, M.magnitude_prune(W, nbytes=nb, storage="BF16"), fro2(W)) is None
        assert not hasattr(M.sparse_plus_low_rank(W, 4, nbytes=nb, storage="BF16"), "_wp_rel_error")
    # auto picks what measuring every candidate picks
    best = M.auto(W, nbytes=nb)
    assert not hasattr(best, "_wp_rel_error")
    assert best.nbytes <= nb


def test_fro2_is_error_stats_first_number():
    from weightpress.compression.matrices import error_stats

    a = np.random.default_rng(2).standard_normal((300, 7000)).astype(np.float32)
    assert fro2(a) == error_stats(a, a)[0]
    assert fro2(np.zeros((0, 3))) == 0.0


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_a_curve_hashes_its_layer_once_and_finds_the_same_cached_results(layout):
    """``options["_w_hash"]`` (an allocation curve's, computed once per layer) is the key the
    builders compute themselves: a build with it reuses what one without it cached."""
    from weightpress.compression import aware as A

    rng = np.random.default_rng(4)
    W = (rng.standard_normal((40, 56)) / 8).astype(np.float32)
    Ws = W if layout == "out_in" else np.ascontiguousarray(W.T)
    st = CalibrationStats.from_inputs(correlated_inputs(rng, 200, 56).astype(np.float32))
    A._MEMO.clear()  # (the memo outlives calls: another test's layer could be this one)
    a = A.compress_aware(Ws, st, "quant", nbytes=W.nbytes / 5, layout=layout)
    n = len(st._cache)
    b = A.compress_aware(Ws, st, "quant", nbytes=W.nbytes / 5, layout=layout,
                         options={"_w_hash": A.weights_hash(Ws, layout)})
    assert len(st._cache) == n  # nothing measured again: the same keys
    assert all(np.array_equal(a.parts()[k], b.parts()[k]) for k in a.parts())


@pytest.mark.parametrize("kw", [dict(), dict(scope="allocate"), dict(method="auto")],
                         ids=["quant", "allocate", "auto"])
def test_layers_side_by_side_write_the_same_file(model, tmp_path, kw, monkeypatch):
    """Small layers are built (and their curves measured) two at a time on two threads; the
    file is the one a single thread writes, layer by layer."""
    import weightpress as wp
    from weightpress.model import compress as C
    from weightpress.model.compress import compress_model, open_source

    used = []
    real = C.ordered_map
    monkeypatch.setattr(C, "ordered_map", lambda *a, **k: used.append(a[2]) or real(*a, **k))

    mp, cp = model
    kw = {"method": "quant", **kw}
    outs = []
    for n in (1, 2):
        out = tmp_path / f"t{n}.wpz"
        with wp.threads(n), open_source(mp) as src:
            compress_model(src, out, ratio=4, calibration=cp, min_size=16, **kw)
        outs.append(out.read_bytes())
        assert bool(used) == (n == 2) and set(used) <= {2}  # side by side only on 2 threads
    assert outs[0] == outs[1]


def test_ordered_map_keeps_order_and_raises_at_the_failing_item():
    from weightpress.model.local_pool import ordered_map

    def f(i):
        if i == 5:
            raise ValueError("five")
        return i * i

    got = []
    with pytest.raises(ValueError, match="five"):
        for v in ordered_map(f, range(10), 2):
            got.append(v)
    assert got == [0, 1, 4, 9, 16]
    assert list(ordered_map(lambda i: -i, range(7), 3)) == [0, -1, -2, -3, -4, -5, -6]


@pytest.mark.parametrize("ahead", [0, 3])
def test_ordered_map_starts_at_most_ahead_items_past_the_workers(ahead):
    """Behind a slow item the other workers go on with up to ``ahead`` more items (layers'
    costs differ a lot), never more: what is held is bounded, the order kept."""
    import threading
    import time

    from weightpress.model.local_pool import AHEAD_BYTES, MAX_AHEAD, ahead_for, ordered_map

    lock = threading.Lock()
    started: list[int] = []
    consumed = [0]
    worst = [0]

    def f(i):
        with lock:
            started.append(i)
            worst[0] = max(worst[0], len(started) - consumed[0])
        if i == 0:
            time.sleep(0.3)  # the slow one: the others run ahead meanwhile
        return i

    out = []
    for v in ordered_map(f, range(12), 2, ahead):
        if v == 0:
            with lock:
                ran = len(started)
            assert ran == 2 + ahead + 1  # every slot filled behind the slow item
        out.append(v)
        with lock:
            consumed[0] += 1
    assert out == list(range(12))
    assert worst[0] <= 2 + ahead + 1
    assert ahead_for(1) == MAX_AHEAD and ahead_for(AHEAD_BYTES // 3) == 3
    assert ahead_for(2 * AHEAD_BYTES) == 0


def test_ordered_map_does_not_count_free_items_against_ahead():
    """Items of cost 0 (layers kept as they are) hold nothing: behind a slow item, the window
    of ``workers + ahead`` counts only the others."""
    import threading
    import time

    from weightpress.model.local_pool import ordered_map

    lock = threading.Lock()
    started: list[int] = []

    def f(i):
        with lock:
            started.append(i)
        if i == 0:
            time.sleep(0.3)
        return i

    out = []
    for v in ordered_map(f, range(12), 2, 0, cost=lambda i: float(i % 2 == 0)):
        if v == 0:
            with lock:
                assert sorted(started) == [0, 1, 2, 3, 4]  # 3 counted (0, 2, 4), 2 free
        out.append(v)
    assert out == list(range(12))


def test_ordered_map_starts_the_longest_of_the_last_items_first():
    """With costs, the items left once the last one is in flight start longest first (no
    long item last beside an idle worker); before that, in order (the caller waits on the
    earliest). Results in order, an error at its item's turn."""
    import threading
    import time

    from weightpress.model.local_pool import ordered_map

    lock = threading.Lock()
    started: list[int] = []
    gate = threading.Event()

    def f(i):
        with lock:
            started.append(i)
        if i == 0:
            gate.wait(5)  # holds one worker until every other item is done
        if i == 1:
            time.sleep(0.5)  # (every item is in flight by its end: submitting takes µs)
        return i * 10

    cost = {i: (100.0 if i == 7 else float(i % 3)) for i in range(9)}
    threading.Timer(1.0, gate.set).start()
    assert list(ordered_map(f, range(9), 2, 8, cost=cost.__getitem__)) == [i * 10 for i in range(9)]
    # 0 and 1 in order, then the rest longest first (ties in order)
    assert set(started[:2]) == {0, 1} and started[2:] == [7, 2, 5, 8, 4, 3, 6], started
    started.clear()  # without costs: in order
    assert list(ordered_map(f, range(9), 2, 8)) == [i * 10 for i in range(9)]
    assert set(started[:2]) == {0, 1} and started[2:] == list(range(2, 9)), started

    def g(i):
        if i == 3:
            raise ValueError("three")
        return i

    got = []
    with pytest.raises(ValueError, match="three"):
        for v in ordered_map(g, range(6), 2, 1, cost=lambda i: float(i)):
            got.append(v)
    assert got == [0, 1, 2]


def test_the_scratch_store_is_not_fsyncd_a_journal_is(model, tmp_path, monkeypatch):
    """The ratio search's scratch store (nothing reads it after a crash) skips the fsync per
    layer that a resumable run's journal makes; the files are the same."""
    mp, cp = model
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    out, out2 = str(tmp_path / "a.wpz"), str(tmp_path / "b.wpz")
    _compress(mp, out, CalibrationSet(cp, keep_bytes=0))
    scratch = len(synced)
    synced.clear()
    _compress(mp, out2, CalibrationSet(cp, keep_bytes=0), journal=True)
    assert scratch == 2  # the two tries' containers only
    assert len(synced) >= scratch + 12  # and every layer the journal recorded
    with open(out, "rb") as a, open(out2, "rb") as b:
        assert a.read() == b.read()


def test_a_generous_ratio_steps_up_to_dense_in_one_tries_builds(model, tmp_path, monkeypatch):
    """At --ratio 1.5 every precision fits a layer's budget: its step up is to keep it dense,
    so the first try's file (far too small) is filled by keeping layers, the most error per
    byte first, without a second try building every layer at a budget past dense; the same
    file as that search writes."""
    import weightpress.model.compress as mc

    mp, cp = model
    builds, tries = [], []
    real_build, real_exec = mc._build_layer, mc.execute
    monkeypatch.setattr(mc, "_build_layer", lambda *a, **k: builds.append(a[1].form) or real_build(*a, **k))
    monkeypatch.setattr(mc, "execute", lambda *a, **k: tries.append(k.get("alt")) or real_exec(*a, **k))
    out = str(tmp_path / "o.wpz")
    with mc.open_source(mp) as src:
        rep = mc.compress_model(src, out, ratio=1.5, method="quant", min_size=16,
                                calibration=CalibrationSet(cp, keep_bytes=0))
    assert len(tries) == 2 and tries[1] and {f for f, _ in tries[1].values()} == {"dense"}
    assert builds.count(None) == 12 and len(builds) == 24  # each layer, and its dense step
    assert 0.99 * 1.5 <= rep.ratio <= 1.03 * 1.5
    kept = {r.name for r in rep.rows if r.form == "dense"}
    assert kept == set(tries[1]) and all(r.output_error == 0.0 for r in rep.rows if r.name in kept)
    monkeypatch.setattr(mc, "ALT_STEP", 0.0)  # the search without steps up: three tries
    tries.clear()
    with mc.open_source(mp) as src:
        mc.compress_model(src, str(tmp_path / "p.wpz"), ratio=1.5, method="quant", min_size=16,
                          calibration=CalibrationSet(cp, keep_bytes=0))
    assert len(tries) == 3
    with open(out, "rb") as a, open(tmp_path / "p.wpz", "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("ratio,stepped", [(4, True), (10, False)])
def test_steps_are_built_only_where_a_budget_fits_the_top_precisions(model, tmp_path,
                                                                      monkeypatch, ratio, stepped):
    """The byte model decides before the first try: at --ratio 4 the quantized layers fit 6
    bits and the 8-bit step needs more than a try gives, so steps are built; at --ratio 10
    (3 bits) a second ratio's try gives the mix more choice, and no step is built."""
    import weightpress.model.compress as mc

    mp, cp = model
    alts = []
    real = mc.execute
    monkeypatch.setattr(mc, "execute", lambda *a, **k: alts.append(a[4].alt) or real(*a, **k))
    with mc.open_source(mp) as src:
        mc.compress_model(src, str(tmp_path / "o.wpz"), ratio=ratio, method="quant", min_size=16,
                          calibration=CalibrationSet(cp, keep_bytes=0))
    assert (alts[0] >= mc.ALT_STEP) is stepped and all(a == 0 for a in alts[1:])


def test_layer_cost_counts_the_inputs_of_either_layout():
    """The longest-first order's estimate: ``out·in`` weights, times ``in`` where calibrated;
    the inputs are all but the first axis of an [out, in, ...] tensor and all but the last of
    an [in, out] (Keras: [kh, kw, in, out]) one. Kept layers cost nothing."""
    from weightpress.model.compress import _layer_cost
    from weightpress.model.rules import Decision

    def d(shape, action="auto"):
        return Decision("w", shape, np.dtype(np.float32), action, "", {})

    assert _layer_cost(d((384, 1536)), "out_in", True) == _layer_cost(d((1536, 384)), "in_out", True)
    assert _layer_cost(d((384, 1536)), "out_in", True) == 384 * 1536 * (1 + 1536 / 64)
    assert (_layer_cost(d((64, 32, 3, 3)), "out_in", True)
            == _layer_cost(d((3, 3, 32, 64)), "in_out", True) == 64 * 288 * (1 + 288 / 64))
    assert _layer_cost(d((384, 1536)), "out_in", False) == 384 * 1536
    assert _layer_cost(d((384,)), "out_in", True) == 0.0
    assert _layer_cost(d((384, 384), "skip"), "out_in", True) == 0.0
