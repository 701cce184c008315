"""Smoke tests for ``cnnx bench``: the peers compute the right values, the CLI writes JSON.

Speed is never asserted here; every case is tiny.
"""

import json
import os
import platform
import sys

import numpy as np
import pytest

import _helpers as H
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


@pytest.fixture(autouse=True)
def mallopt_calls(monkeypatch):
    """``cnnx bench`` retunes glibc's malloc for its whole process: never in the test
    process (other tests measure memory); test_steady_malloc_subprocess runs the real one."""
    calls = []
    monkeypatch.setattr(bm, "steady_malloc",
                        lambda: calls.append(1) or ("steady", "(stub of the test suite)"))
    return calls


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
    assert report["baselines"]["gemm"]["1"]["routine"] == "sgemm"
    assert "cnnx" in report["environment"]
    assert report["dtype"] == "float32" and report["settings"]["dtype"] == "float32"
    assert "dtype: float32" in text and "sgemm 512^3" in text
    assert report["environment"]["malloc"] == {"mode": "steady",
                                               "how": "(stub of the test suite)"}
    assert "memory: (stub of the test suite)" in text
    _check_blas_report(report, text)


def test_cli_malloc_system_leaves_malloc_alone(tmp_path, mallopt_calls):
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--quick", "--peers", "cnnx", "--only", "tiny_conv", "--repeat",
                     "1", "--no-baselines", "--malloc", "system", "--json", str(out),
                     "--no-plot"]) == 0
    assert not mallopt_calls
    assert json.loads(out.read_text())["environment"]["malloc"]["mode"] == "system"


def test_steady_malloc_subprocess(tmp_path):
    """The real mallopt call, in a process of its own."""
    code = ("import json, cnnx.benchmark as bm; print(json.dumps(bm.steady_malloc()))")
    mode, how = json.loads(H.run_python(code))
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert mode == "steady" and "mmap threshold 32 MiB" in how
    else:
        assert mode is None and how.startswith("system malloc")


def _check_blas_report(report, text):
    """The BLAS libraries and the OpenBLAS variables are in the JSON and the printed report
    (read from the environment as it is: tests never set or unset OPENBLAS_*)."""
    blas = report["environment"]["blas"]
    libs = blas["libraries"]
    assert libs, "cnnx's BLAS (SciPy's) should be loaded by now"
    for lib in libs:
        assert lib["file"] and lib["file"] == os.path.basename(lib["filepath"])
        assert {"internal_api", "version", "architecture"} <= set(lib)
        assert f"BLAS {lib['file']}: {lib['internal_api']} {lib['version']}" in text
    for var in bm.OPENBLAS_VARS:
        assert blas[var] == os.environ.get(var)
        assert report["environment"]["env_vars"][var] == os.environ.get(var)
        if os.environ.get(var) is not None:
            assert f"{var}={os.environ[var]}" in text
    core = os.environ.get("OPENBLAS_CORETYPE")
    if core:
        assert blas["note"] and core in blas["note"]
        assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in text
    else:
        assert blas["note"] is None and "env -u" not in text


def test_format_blas_note():
    info = {"libraries": [{"file": "libopenblas.so", "filepath": "/x/scipy.libs/libopenblas.so",
                           "owner": "scipy", "internal_api": "openblas", "version": "0.3.30",
                           "architecture": "Haswell"}],
            "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512", "note": "forced"}
    lines = bm.format_blas(info)
    assert lines == ["  BLAS libopenblas.so: openblas 0.3.30, kernel Haswell  (SciPy's: "
                     "cnnx's GEMMs)",
                     "  environment: OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512",
                     "  note: forced"]
    info.update(OPENBLAS_CORETYPE=None, OPENBLAS_L2_SIZE=None, note=None)
    assert bm.format_blas(info) == lines[:1]
    assert bm._blas_owner(info["libraries"][0]["filepath"]) == "scipy"
    assert bm._blas_owner("/site-packages/numpy.libs/libscipy_openblas64_.so") == "numpy"
    assert bm._blas_owner("/usr/lib/libopenblas.so") is None


def test_float64_data_tolerance_and_bytes():
    case = PEER_CASES[0]
    d32, d64 = bm.make_data(case), bm.make_data(case, "float64")
    assert all(d32[k].dtype == np.float32 for k in ("x", "w", "b", "gy"))
    assert all(d64[k].dtype == np.float64 for k in ("x", "w", "b", "gy"))
    assert all(d64[k].shape == d32[k].shape for k in d32)
    np.testing.assert_array_equal(bm.make_data(case, "float32")["x"], d32["x"])
    with pytest.raises(ValueError, match="dtype"):
        bm.make_data(case, "float16")
    pool = bm.normalise_case({"name": "p", "op": "maxpool", "x": [1, 1, 4, 4], "k": 2})
    assert bm.bytes_moved(pool, "fwd", 8) == 16 * 8 + 4 * 8 + 4 * 8
    # float64 tolerance: an error at float32 precision is a mismatch in float64, not float32
    y = np.linspace(-1, 1, 50)
    off = y * (1 + 3e-7)
    assert bm.compare_outputs({"y": off}, {"y": y})
    assert bm.compare_outputs({"y": y * (1 + 1e-13)}, {"y": y}) == []
    assert bm.compare_outputs({"y": off.astype(np.float32)}, {"y": y.astype(np.float32)}) == []
    # a peer returning another dtype than asked is a mismatch
    problems = bm.compare_outputs({"y": y.astype(np.float32)}, {"y": y})
    assert problems == ["y: dtype float32 != float64"]


@pytest.mark.parametrize("case", PEER_CASES, ids=IDS)
def test_numpy_peer_float64_matches_cnnx(case):
    data = bm.make_data(case, "float64")
    cnnx_peer, numpy_peer = bp.make_peer("cnnx"), bp.make_peer("numpy")
    cnnx_peer.load()
    want = cnnx_peer.setup(case, data).outputs()
    assert all(v.dtype == np.float64 for k, v in want.items() if k != "indices")
    try:
        bound = numpy_peer.setup(case, data)
    except bp.Unsupported as exc:
        pytest.skip(str(exc))
    problems = bm.compare_outputs(bound.outputs(), want)
    assert not problems, problems


def test_cli_quick_float64_every_peer(tmp_path, monkeypatch, capsys):
    """--dtype float64: float64 inputs, every available peer matches cnnx in float64 (at the
    float64 tolerance), dgemm baseline, the dtype recorded."""
    peers = ["cnnx", "numpy", "reference"]
    for lib in ("numba", "torch"):
        try:
            __import__(lib)
            peers.append(lib)
        except ImportError:
            pass
    seen = []
    real_make_data = bm.make_data

    def spy(case, dtype="float32"):
        data = real_make_data(case, dtype)
        seen.append({k: v.dtype for k, v in data.items() if v is not None})
        return data

    monkeypatch.setattr(bm, "make_data", spy)
    out = tmp_path / "bench64.json"
    rc = cli_main(["bench", "--quick", "--dtype", "float64", "--peers", ",".join(peers),
                   "--repeat", "1", "--min-sample", "0", "--json", str(out), "--no-plot"])
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert rc == 0, report["mismatches"] + report["errors"]
    assert len(seen) == 3 and all(dt == np.float64 for d in seen for dt in d.values())
    assert report["dtype"] == "float64" and report["settings"]["dtype"] == "float64"
    assert {r["peer"] for r in report["results"]} == set(peers)
    assert all(r["status"] == "ok" for r in report["results"])
    # pooling bytes at 8 bytes per value
    rec = next(r for r in report["results"] if r["case"] == "tiny_avgpool" and r["mode"] == "fwd")
    case = next(c for c in report["cases"] if c["name"] == "tiny_avgpool")
    assert rec["bytes"] == bm.bytes_moved(case, "fwd", 8)
    gemm = report["baselines"]["gemm"]["1"]
    assert gemm["routine"] == "dgemm" and gemm["dtype"] == "float64"
    assert "scipy_dgemm_gflops" in gemm and "scipy_sgemm_gflops" not in gemm
    assert "dgemm 512^3" in text and "dtype: float64" in text and "of the dgemm rate" in text
    _check_blas_report(report, text)


def test_cli_textbook_float64(tmp_path, capsys):
    out = tmp_path / "tb.json"
    rc = cli_main(["bench", "--textbook", "2", "--textbook-shape", "2,2,4,4", "--dtype",
                   "float64", "--peers", "cnnx,numpy", "--no-baselines", "--json", str(out),
                   "--no-plot"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "float64, forward+backward" in text
    assert "BLAS " in text   # the BLAS report even without the baselines
    assert json.loads(out.read_text())["textbook"]["dtype"] == "float64"
    with pytest.raises(SystemExit):   # argparse: float32 or float64 only
        cli_main(["bench", "--quick", "--dtype", "float16", "--no-baselines"])


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
