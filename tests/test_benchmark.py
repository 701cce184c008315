"""Smoke tests for ``cnnx bench``: the peers compute the right values, the CLI writes JSON.

Speed is never asserted here; every case is tiny.
"""

import json
import os

import numpy as np
import pytest

from cnnx import _bench_peers as bp
from cnnx import benchmark as bm
from cnnx.cli import main as cli_main

# tiny cases for the peer checks: the built-in tiny ones plus the other code paths
# (reshape-tiled pooling, im2col pooling with padding, strided/dilated conv, no bias)
PEER_CASES = [bm.normalise_case(c) for c in bm.TINY_CASES + [
    {"name": "conv_s2_d2", "op": "conv", "x": [2, 2, 9, 7], "out": 3, "k": 3, "s": 2, "d": 2,
     "bias": False},
    {"name": "conv_k1", "op": "conv", "x": [3, 4, 5, 5], "out": 2, "k": 1},
    {"name": "conv_groups", "op": "conv", "x": [2, 4, 6, 6], "out": 6, "k": 3, "p": 1,
     "groups": 2},
    {"name": "max_tiled", "op": "maxpool", "x": [2, 3, 8, 6], "k": 2},
    {"name": "max_k3s1", "op": "maxpool", "x": [1, 2, 7, 7], "k": 3, "s": 1},
    {"name": "max_dil", "op": "maxpool", "x": [1, 2, 9, 9], "k": 2, "s": 2, "d": 2},
    {"name": "avg_k3s2p1", "op": "avgpool", "x": [2, 3, 7, 7], "k": 3, "s": 2, "p": 1},
    {"name": "avg_tiled", "op": "avgpool", "x": [2, 2, 6, 6], "k": 3},
]]
IDS = [c["name"] for c in PEER_CASES]


@pytest.fixture(scope="module")
def truth():
    """cnnx's outputs per case (themselves checked against the pure-Python reference)."""
    cnnx_peer = bp.make_peer("cnnx")
    cnnx_peer.load()
    ref = bp.make_peer("reference")
    ref.load()
    out = {}
    for case in PEER_CASES:
        data = bm.make_data(case)
        want = cnnx_peer.setup(case, data).outputs()
        if case["tiny"]:  # the reference is slow: only on the built-in tiny cases
            problems = bm.compare_outputs(ref.setup(case, data).outputs(), want)
            assert not problems, problems
        out[case["name"]] = (data, want)
    return out


def _check_peer(name, case, truth):
    peer = bp.make_peer(name)
    peer.load()
    data, want = truth[case["name"]]
    try:
        bound = peer.setup(case, data)
    except bp.Unsupported as exc:
        pytest.skip(f"{name} does not implement {case['name']}: {exc}")
    got = bound.outputs()
    expected_keys = {"y", "grad_x"} | ({"grad_w"} if case["op"] == "conv" else set())
    assert expected_keys <= set(got)
    problems = bm.compare_outputs(got, want)
    assert not problems, problems
    # the timed callables run and give the same forward value
    y = bound.forward()
    y = y[0] if isinstance(y, tuple) else y
    np.testing.assert_allclose(np.asarray(y), want["y"], rtol=1e-4, atol=1e-5)
    bound.forward_backward()


@pytest.mark.parametrize("case", PEER_CASES, ids=IDS)
def test_numpy_im2col_peer_matches_cnnx(case, truth):
    _check_peer("numpy", case, truth)


@pytest.mark.parametrize("case", PEER_CASES, ids=IDS)
def test_numba_peer_matches_cnnx(case, truth):
    pytest.importorskip("numba")
    _check_peer("numba", case, truth)


@pytest.mark.torch
@pytest.mark.parametrize("case", PEER_CASES[:3], ids=IDS[:3])
def test_torch_peer_matches_cnnx(case, truth):
    pytest.importorskip("torch")
    _check_peer("torch", case, truth)


def test_numpy_col2im_is_adjoint_of_im2col():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    cols = bp.im2col(x, 3, 2, 1, 2, 1)
    c = rng.standard_normal(cols.shape)
    back = bp.col2im(c, x.shape, 3, 2, 1, 2, 1)
    assert np.isclose(np.sum(cols * c), np.sum(x * back))


def test_default_cases_match_shared_file():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, os.pardir, os.pardir, "shared", "bench_cases.json")
    if not os.path.exists(path):
        pytest.skip("shared/bench_cases.json is not beside this checkout")
    assert bm.load_cases(path) == bm.load_cases(None)


def test_flops_and_bytes():
    conv = bm.normalise_case({"name": "c", "op": "conv", "x": [2, 4, 8, 8], "out": 6, "k": 3,
                              "p": 1, "groups": 2})
    assert bm.out_shape(conv) == (2, 6, 8, 8)
    assert bm.flops(conv, "fwd") == 2 * 2 * 6 * 8 * 8 * 2 * 9
    assert bm.flops(conv, "fwd+bwd") == 3 * bm.flops(conv, "fwd")
    pool = bm.normalise_case({"name": "p", "op": "maxpool", "x": [1, 1, 4, 4], "k": 2})
    assert pool["s"] == 2 and bm.out_shape(pool) == (1, 1, 2, 2)
    assert bm.bytes_moved(pool, "fwd") == 16 * 4 + 4 * 4 + 4 * 8


@pytest.mark.parametrize("bad, match", [
    ({"name": "a", "op": "fft", "x": [1, 1, 4, 4], "k": 2}, "'op'"),
    ({"name": "a", "op": "conv", "x": [1, 1, 4], "out": 1, "k": 2}, "'x'"),
    ({"name": "a", "op": "conv", "x": [1, 1, 4, 4], "k": 2}, "'out'"),
    ({"name": "a", "op": "maxpool", "x": [1, 1, 4, 4], "k": 2, "stride": 1}, "unknown field"),
    ({"name": "a", "op": "maxpool", "x": [1, 1, 4, 4], "k": 9}, "larger"),
    ({"op": "maxpool", "x": [1, 1, 4, 4], "k": 2}, "name"),
])
def test_bad_cases_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        bm.normalise_case(bad)


def test_compare_outputs_flags_wrong_values():
    a = {"y": np.ones((2, 3), np.float32), "indices": np.arange(3)}
    assert bm.compare_outputs(a, a) == []
    b = {"y": a["y"] + np.float32(0.01), "indices": np.arange(3)[::-1]}
    problems = bm.compare_outputs(b, a)
    assert len(problems) == 2 and "y:" in problems[0] and "indices" in problems[1]


def test_cli_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = cli_main(["bench", "--quick", "--peers", "cnnx,numpy,reference", "--only", "tiny_*",
                   "--repeat", "2", "--json", str(out), "--no-plot"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tiny_conv" in text and "copy bandwidth" in text
    report = json.loads(out.read_text())
    assert not report["mismatches"] and not report["errors"]
    assert {c["name"] for c in report["cases"]} == {"tiny_conv", "tiny_maxpool", "tiny_avgpool"}
    recs = report["results"]
    assert {r["peer"] for r in recs} == {"cnnx", "numpy", "reference"}
    assert {r["mode"] for r in recs} == {"fwd", "fwd+bwd"}
    for r in recs:
        assert r["status"] == "ok" and r["threads"] == 1
        assert len(r["times_s"]) >= 1 and r["median_s"] > 0
        assert ("gflops" in r) == (r["op"] == "conv")
        assert ("gbps" in r) == (r["op"] != "conv")
    assert report["baselines"]["copy"]["gbps"] > 0
    assert report["baselines"]["gemm"]["1"]["gflops"] > 0
    assert "cnnx" in report["environment"]


def test_cli_reports_a_mismatch_and_does_not_time_it(tmp_path, monkeypatch, capsys):
    real = bp.numpy_conv_forward

    def wrong(*args, **kwargs):
        y, cols = real(*args, **kwargs)
        return y + np.float32(1.0), cols

    monkeypatch.setattr(bp, "numpy_conv_forward", wrong)
    out = tmp_path / "bench.json"
    rc = cli_main(["bench", "--quick", "--peers", "cnnx,numpy", "--only", "tiny_conv",
                   "--no-baselines", "--json", str(out), "--no-plot"])
    assert rc == 1
    assert "MISMATCH" in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert len(report["mismatches"]) == 1 and "numpy" in report["mismatches"][0]
    assert {r["peer"] for r in report["results"]} == {"cnnx"}


def test_cli_custom_cases_file_and_errors(tmp_path, capsys):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"name": "mine", "op": "avgpool", "x": [1, 2, 6, 6], "k": 2}]))
    out = tmp_path / "r.json"
    rc = cli_main(["bench", "--cases", str(cases), "--peers", "cnnx,numpy", "--repeat", "2",
                   "--threads", "1", "--modes", "fwd", "--no-baselines", "--json", str(out),
                   "--no-plot"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert [c["name"] for c in report["cases"]] == ["mine"]
    assert {r["mode"] for r in report["results"]} == {"fwd"}

    cases.write_text(json.dumps([{"name": "bad", "op": "conv", "x": [1, 2, 6, 6], "k": 2}]))
    assert cli_main(["bench", "--cases", str(cases), "--no-baselines"]) == 2
    assert "'out'" in capsys.readouterr().err
    assert cli_main(["bench", "--quick", "--only", "nope", "--no-baselines"]) == 2
    assert cli_main(["bench", "--quick", "--peers", "cnnx,fortran", "--no-baselines"]) == 2


def test_missing_peer_is_skipped_with_a_note(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("No module named 'numba'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(bp, "_NUMBA_KERNELS", None)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    peers, notes = bm.load_peers(["cnnx", "numba"])
    assert [p.name for p in peers] == ["cnnx"]
    assert len(notes) == 1 and "numba" in notes[0] and "skipped" in notes[0]
