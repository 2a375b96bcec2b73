"""Learned solvers (flowode.learned): identities with the base solvers, exact gradients, held-out
fitting, the JSON artefact, the model-fingerprint guard, the CLI and bench, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

import flowode
from flowode.analytic import gmm_ring
from flowode.bench import get_problem
from flowode.cli import main
from flowode.grids import GridError
from flowode.learned import (
    LearnedSolver,
    LearnedSpec,
    ModelMismatchError,
    _objective,
    _Params,
    learn_solver,
    load_learned,
    model_fingerprint_of,
    per_sample_errors,
)
from flowode.solvers import SolverError, available, get_class, make


@pytest.fixture(scope="module")
def ring():
    sched = flowode.DiscreteVPSchedule.linear()
    return gmm_ring().model(sched)


def _prior(model, n, seed):
    g = torch.Generator().manual_seed(seed)
    return model.prior_sample((n, 2), model.schedule.sigma_max, generator=g, dtype=torch.float64)


def _spec(grid, base="dpm_solver++_2m", history=2, deltas=None, cdeltas=None, corrector=False):
    n = len(grid) - 1
    if corrector and cdeltas is None:
        cdeltas = [[0.0] * (history + 1)] * n
    return LearnedSpec(base=base, history=history, nfe=n, sigmas=[float(v) for v in grid],
                       deltas=deltas if deltas is not None else [[0.0] * history] * n,
                       corrector=corrector, corrector_deltas=cdeltas)


@pytest.fixture(scope="module")
def fitted(ring):
    """A small fit on the ring (NFE 4): calibration seed 1, validation seed 2."""
    xc, xv = _prior(ring, 64, 1), _prior(ring, 64, 2)
    return learn_solver(ring, xc, xv, 4, iters=25, val_every=5, meta={"problem": "ring"})


@pytest.mark.parametrize("spacing", ["logsnr", "karras", "trailing"])
@pytest.mark.parametrize("base, solver", [("dpm_solver++_2m", "dpm_solver++_2m"), ("ddim", "ddim")])
def test_zero_correction_is_the_base_solver(ring, spacing, base, solver):
    x = _prior(ring, 32, 0)
    for n in (1, 2, 5, 10):
        grid = flowode.sigma_grid(ring.schedule, n, spacing)
        slv = LearnedSolver.from_spec(_spec(grid, base, 2 if base != "ddim" else 1))
        a, b = flowode.integrate(ring, x, grid, slv), flowode.integrate(ring, x, grid, solver)
        assert a.nfe == b.nfe == n
        assert float((a.x - b.x).abs().max()) < 1e-12


@pytest.mark.parametrize("spacing", ["logsnr", "karras", "trailing"])
def test_zero_correction_with_corrector_is_unipc(ring, spacing):
    """corrector=True, zero corrections: UniPC (bh2) with the DPM-Solver++(2M) predictor, final and
    recorded (corrected) states alike."""
    x = _prior(ring, 32, 0)
    for n in (1, 2, 3, 5, 10):
        grid = flowode.sigma_grid(ring.schedule, n, spacing)
        slv = LearnedSolver.from_spec(_spec(grid, corrector=True))
        a = flowode.integrate(ring, x, grid, slv, save_at="steps")
        b = flowode.integrate(ring, x, grid, make("unipc", predictor="dpm_solver++"), save_at="steps")
        assert a.nfe == b.nfe == n
        assert float((a.trajectory - b.trajectory).abs().max()) < 1e-12


def test_weights_sum_to_one_keep_a_constant_x0(ring):
    # a model whose x0 is a constant c: any consistent multistep update lands exactly on c at sigma = 0
    c = torch.tensor([0.3, -1.2], dtype=torch.float64)
    model = flowode.EpsilonModel(lambda x, t: c.expand_as(x).clone(), ring.schedule, prediction="x0")
    grid = flowode.sigma_grid(ring.schedule, 6, "logsnr")
    deltas = [[0.0, 0.0]] + [[-0.3 * k, 0.3 * k] for k in range(1, 6)]
    slv = LearnedSolver.from_spec(_spec(grid, deltas=deltas))
    out = flowode.integrate(model, _prior(ring, 8, 0), grid, slv).x
    assert float((out - c).abs().max()) < 1e-12


@pytest.mark.parametrize("corrector, shift", [(False, False), (True, False), (True, True)])
def test_gradient_is_the_total_derivative(ring, corrector, shift):
    """Autograd through the driver (straight-through levels + the finite difference of x0 in log
    sigma) against central differences of the true objective."""
    n = 5
    grid = flowode.sigma_grid(ring.schedule, n, "logsnr")
    x = _prior(ring, 16, 3)
    ref = flowode.reference_solve(ring, x, ring.schedule.sigma_max, 0.0)
    par = _Params(n, 2, ring.schedule.sigma_min, ring.schedule.sigma_max, grid, corrector, shift)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        par.delta.copy_(0.1 * torch.randn(par.delta.shape, generator=gen, dtype=torch.float64))
        par.cdelta.copy_(0.1 * torch.randn(par.cdelta.shape, generator=gen, dtype=torch.float64))
        par.shift.copy_(0.05 * torch.randn(par.shift.shape, generator=gen, dtype=torch.float64))

    def loss(train: bool) -> torch.Tensor:
        with torch.no_grad():
            g = torch.stack(par.levels())
            cd = par.corrector_deltas()
        slv = LearnedSolver.from_spec(_spec(g, deltas=par.deltas().detach().tolist(), corrector=corrector,
                                            cdeltas=None if cd is None else cd.tolist()))
        slv.spec.shifts = par.shifts()
        if train:
            slv._params = par
        out = flowode.integrate(ring, x, slv.sigmas, slv, grad="autograd" if train else None).x
        return _objective(per_sample_errors(out, ref), "mse")

    loss(True).backward()
    h = 1e-5
    checks = [(par.u, ()), (par.z, (1,)), (par.z, (3,)), (par.delta, (2, 0))]
    if corrector:
        checks += [(par.cdelta, (2, 0)), (par.cdelta, (3, 1))]
    if shift:
        checks += [(par.shift, (0,)), (par.shift, (2,)), (par.shift, (3,))]
    for prm, idx in checks:
        g = float(prm.grad[idx])
        with torch.no_grad():
            prm[idx] += h
        up = float(loss(False))
        with torch.no_grad():
            prm[idx] -= 2 * h
        dn = float(loss(False))
        with torch.no_grad():
            prm[idx] += h
        fd = (up - dn) / (2 * h)
        assert abs(g - fd) <= 5e-3 * abs(fd) + 1e-9, (idx, g, fd)


def test_learning_reduces_held_out_error(ring, fitted):
    e = fitted.spec.errors
    # measured: validation RMSE 0.341 -> 0.240, median 0.330 -> 0.216 (NFE 4, 25 iterations)
    assert e["validation"]["median"] < 0.8 * e["base_validation"]["median"]
    assert e["validation"]["rmse"] < 0.8 * e["base_validation"]["rmse"]
    assert e["calibration"]["rmse"] < e["base_calibration"]["rmse"]
    # and on a third, fresh batch
    x, spec = _prior(ring, 128, 7), fitted.spec
    ref = flowode.reference_solve(ring, x, ring.schedule.sigma_max, 0.0)
    base = LearnedSolver.from_spec(_spec(flowode.sigma_grid(ring.schedule, 4, spec.meta["init_spacing"])))
    e_new = per_sample_errors(flowode.sample(ring, x, nfe=4, solver=fitted).x, ref)
    e_base = per_sample_errors(flowode.integrate(ring, x, base.sigmas, base).x, ref)
    assert float(e_new.median()) < float(e_base.median())
    sig = spec.sigmas
    assert sig[0] == ring.schedule.sigma_max and sig[-1] == 0.0 and all(b < a for a, b in zip(sig, sig[1:]))
    assert sig[-2] >= ring.schedule.sigma_min


def test_json_round_trip(tmp_path, ring, fitted):
    path = tmp_path / "ring4.json"
    fitted.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "flowode.learned" and doc["nfe"] == 4 and doc["base"] == "dpm_solver++_2m"
    assert set(doc["errors"]) >= {"calibration", "validation", "base_calibration", "base_validation"}
    assert doc["fingerprint"] == fitted.spec.fingerprint and doc["shape"] == [2]
    back = load_learned(path)
    assert back.spec.sigmas == fitted.spec.sigmas and back.spec.deltas == fitted.spec.deltas
    x = _prior(ring, 16, 5)
    assert torch.equal(flowode.sample(ring, x, nfe=4, solver=back).x, flowode.sample(ring, x, nfe=4, solver=fitted).x)
    by_name = make("learned", path=str(path))
    assert torch.equal(flowode.sample(ring, x, nfe=4, solver=by_name).x, flowode.sample(ring, x, nfe=4, solver=back).x)


def test_fingerprint_mismatch_refused_with_override(tmp_path, fitted):
    path = tmp_path / "ring4.json"
    fitted.save(path)
    other = gmm_ring(radius=3.0).model(flowode.DiscreteVPSchedule.linear())
    x = _prior(other, 8, 0)
    with pytest.raises(ModelMismatchError, match=r"fingerprint .*check_model=False"):
        flowode.sample(other, x, nfe=4, solver=load_learned(path))
    sol = flowode.sample(other, x, nfe=4, solver=load_learned(path, check_model=False))
    assert sol.nfe == 4


def test_own_grid_only(ring, fitted):
    x = _prior(ring, 8, 0)
    with pytest.raises(SolverError, match="own grid of 4 steps"):
        flowode.integrate(ring, x, flowode.sigma_grid(ring.schedule, 4, "logsnr"), fitted)
    with pytest.raises(GridError, match="fitted for 4 steps"):
        flowode.sample(ring, x, nfe=5, solver=fitted)
    with pytest.raises(ValueError, match="own grid"):
        flowode.sample(ring, x, nfe=4, solver=fitted, spacing="karras")
    assert flowode.integrate(ring, x, fitted.sigmas, fitted).nfe == 4
    with pytest.raises(SolverError, match="cannot encode"):
        flowode.encode(ring, x, steps=4, solver=fitted)


def test_registry_finds_it_but_does_not_list_it():
    assert "learned" not in available()
    assert get_class("learned") is LearnedSolver
    with pytest.raises(SolverError, match="needs an artefact"):
        _ = make("learned").sigmas
    with pytest.raises(SolverError, match="no file"):
        make("learned", path="/nonexistent/x.json")


def test_bad_artefact_files(tmp_path):
    p = tmp_path / "grid.json"
    p.write_text(json.dumps({"format": "flowode.grid", "sigmas": [1.0, 0.0]}))
    with pytest.raises(SolverError, match="not a flowode learned-solver file"):
        load_learned(p)
    p.write_text(json.dumps({"format": "flowode.learned", "version": 1, "base": "dpm_solver++_2m", "history": 2,
                             "nfe": 2, "sigmas": [1.0, 2.0, 0.0], "deltas": [[0, 0], [0, 0]]}))
    with pytest.raises(SolverError, match="strictly decreasing"):
        load_learned(p)
    p.write_text("{not json")
    with pytest.raises(SolverError, match="is not JSON"):
        load_learned(p)


def test_bad_input_messages(ring):
    xc, xv = _prior(ring, 16, 1), _prior(ring, 16, 2)
    cases = [
        (dict(nfe=0), "`nfe` must be a positive integer"),
        (dict(base="unipc"), "`base` must be one of"),
        (dict(history=0), "`history` must be an integer in 1..4"),
        (dict(objective="median"), "`objective` must be one of"),
        (dict(grad="adjoint"), "`grad` must be 'autograd' or 'checkpoint'"),
        (dict(lr=-1.0), "`lr` must be a positive number"),
    ]
    for kw, msg in cases:
        args = dict(nfe=3, iters=1)
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            learn_solver(ring, xc, xv, args.pop("nfe"), **args)
    with pytest.raises(ValueError, match="shares start states"):
        learn_solver(ring, xc, torch.cat([xv, xc[:1]]), 3, iters=1)
    with pytest.raises(ValueError, match="shape"):
        learn_solver(ring, xc, xv, 3, iters=1, reference_calibration=torch.zeros(3, 2))


def test_calibration_and_validation_seeds_differ(tmp_path, capsys, fitted):
    rc = main(["learn", "--problem", "gmm2d", "--nfe", "3", "--out", str(tmp_path / "x.json"),
               "--calibration-seed", "5", "--validation-seed", "5"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--validation-seed" in err and len(err.strip().splitlines()) == 1
    meta = fitted.spec.meta
    assert meta["calibration_size"] == meta["validation_size"] == 64


def test_cli_learn_then_sample_and_bench(tmp_path, capsys):
    art = tmp_path / "g3.json"
    assert main(["learn", "--problem", "gmm2d", "--nfe", "3", "--out", str(art), "--calibration", "32",
                 "--validation", "32", "--iters", "5", "--corrector", "--shift", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "validation RMSE" in out and art.exists()
    doc = json.loads(art.read_text())
    assert doc["version"] == 2 and doc["corrector"] is True and len(doc["corrector_deltas"]) == 3
    assert len(doc["shifts"]) == 3 and doc["shifts"][0] == 0.0
    assert doc["meta"]["calibration_seed"] != doc["meta"]["validation_seed"] and doc["meta"]["problem"] == "gmm2d"
    # refined from the artefact with another objective; a mismatched --init is one line, exit 2
    art2 = tmp_path / "g3_mse.json"
    assert main(["learn", "--problem", "gmm2d", "--nfe", "3", "--out", str(art2), "--calibration", "32",
                 "--validation", "32", "--iters", "5", "--corrector", "--shift", "--objective", "mse", "--init",
                 str(art), "--quiet"]) == 0
    assert json.loads(art2.read_text())["meta"]["init_spacing"].startswith("init (")
    capsys.readouterr()
    assert main(["learn", "--problem", "gmm2d", "--nfe", "3", "--out", str(art2), "--calibration", "32",
                 "--validation", "32", "--iters", "5", "--init", str(art), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "`init` does not match" in err and len(err.strip().splitlines()) == 1
    assert main(["learn", "--problem", "gmm2d", "--nfe", "3", "--out", str(art2), "--init", str(tmp_path / "none.json"),
                 "--quiet"]) == 2
    assert "`--init`: no file" in capsys.readouterr().err
    assert main(["sample", "--problem", "gmm2d", "--solver", f"learned[path={art}]", "--nfe", "3", "--samples", "8",
                 "--out", str(tmp_path / "s.npy")]) == 0
    capsys.readouterr()
    assert main(["bench", "--problems", "gmm2d", "--solvers", f"learned[path={art}],ddim", "--nfe", "3",
                 "--samples", "16", "--out", str(tmp_path / "bench"), "--no-figures", "--no-progress"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "bench" / "results.jsonl").read_text().splitlines()]
    learned = [r for r in recs if r["solver"] == "learned"]
    assert learned and learned[0]["error"] is None and learned[0]["nfe"] == 3 and math.isfinite(learned[0]["rmse"])
    # a mismatched model: one line on stderr, exit 2
    capsys.readouterr()
    assert main(["sample", "--problem", "gmm64", "--solver", f"learned[path={art}]", "--nfe", "3", "--samples", "4",
                 "--out", str(tmp_path / "t.npy")]) == 2
    err = capsys.readouterr().err
    assert "fingerprint" in err and len(err.strip().splitlines()) == 1


def test_version_1_files_load_without_corrector(tmp_path, ring):
    """Artefacts written before the corrector and the shifts (format version 1) still load and run as
    they did: no corrector, no shifts."""
    grid = flowode.sigma_grid(ring.schedule, 4, "logsnr")
    doc = {"format": "flowode.learned", "version": 1, "base": "dpm_solver++_2m", "history": 2, "nfe": 4,
           "sigmas": [float(v) for v in grid], "deltas": [[0.0, 0.0]] * 4}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(doc))
    slv = load_learned(path)
    assert slv.spec.corrector is False and slv.spec.shifts is None
    x = _prior(ring, 8, 0)
    a, b = flowode.integrate(ring, x, grid, slv), flowode.integrate(ring, x, grid, "dpm_solver++_2m")
    assert float((a.x - b.x).abs().max()) < 1e-12


def test_shifts_move_the_network_input_level(ring):
    """A shift c evaluates the network at sigma e^c on the rescaled state: with shifts the x0 history is
    that of the shifted evaluations (checked against a hand-made DDIM-like first step)."""
    grid = flowode.sigma_grid(ring.schedule, 3, "logsnr")
    x = _prior(ring, 8, 0)
    spec = _spec(grid, base="ddim", history=1)
    spec.shifts = [0.0, -0.2, 0.1]
    out = flowode.integrate(ring, x, grid, LearnedSolver.from_spec(spec), save_at="steps")
    s1 = float(grid[1])
    s_in = s1 * math.exp(-0.2)
    x1 = out.trajectory[1]
    a1, a_in = (float(ring.coefficients(v)[0]) for v in (s1, s_in))
    x0 = ring.predict(x1 * (a_in / a1), s_in).x0
    s2 = float(grid[2])
    a2 = float(ring.coefficients(s2)[0])
    expect = a2 * ((s2 / s1) * x1 / a1 + (1 - s2 / s1) * x0)
    assert float((out.trajectory[2] - expect).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="shifts"):
        bad = _spec(grid)
        bad.shifts = [0.0, float("nan"), 0.0]
        bad.validate()


def test_digits_artefacts_load_and_match_the_shipped_model():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "learned"
    files = sorted(root.glob("digits_nfe*.json"))
    assert len(files) == 6, f"the six shipped digits artefacts are missing from {root}: {files}"
    prob = get_problem("digits")
    # the network's fingerprint is its weights, not its float32 output (which changes with the thread count)
    threads = torch.get_num_threads()
    try:
        fps = set()
        for n in (1, 2):
            torch.set_num_threads(n)
            fps.add(model_fingerprint_of(prob.model, [1, 8, 8], "float32"))
    finally:
        torch.set_num_threads(threads)
    assert len(fps) == 1
    _artefacts_run_on(files, prob.model, prob.prior(2, prob.model.schedule.sigma_max, 0))


def _artefacts_run_on(files, model, x):
    """Each artefact loads (its fingerprint check passes on ``model``), has its held-out errors, and runs."""
    for f in files:
        slv = load_learned(f)
        assert {"calibration", "validation"} <= set(slv.spec.errors)
        sol = flowode.sample(model, x, nfe=slv.spec.nfe, solver=slv)
        assert sol.nfe == slv.spec.nfe and torch.isfinite(sol.x).all()


def _low_nfe():
    """benchmarks/low_nfe.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("low_nfe", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "low_nfe.py")
    assert spec is not None and spec.loader is not None
    low_nfe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(low_nfe)
    return low_nfe


def test_aniso32_artefacts_load_and_match_the_benchmark_mixture():
    """The shipped aniso32 artefacts (benchmarks/low_nfe.py) run on the mixture that benchmark defines."""
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    files = sorted((bench / "learned").glob("aniso32_nfe*.json"))
    assert len(files) == 9, f"the nine shipped aniso32 artefacts are missing from {bench / 'learned'}: {files}"
    prob = _low_nfe().aniso32()
    _artefacts_run_on(files, prob.model, prob.prior(4, float(prob.model.schedule.sigma_max), 0))


def test_benchmark_configurations_per_nfe():
    """A fitting configuration of benchmarks/low_nfe.py with ``nfes`` is tried only at those NFEs, and the
    key does not reach ``learn_solver``."""
    low_nfe = _low_nfe()
    for name in ("digits", "aniso32"):
        for nfe in low_nfe.NFES:
            configs = low_nfe.configs_for(name, nfe)
            want = [c for c in low_nfe.LEARN[name] if nfe in c.get("nfes", low_nfe.NFES)]
            assert len(configs) == len(want) and all("nfes" not in c and "objectives" not in c for c in configs)
    assert [c.get("history", 2) for c in low_nfe.configs_for("digits", 5)] == [2, 2, 4]
    assert [c.get("history", 2) for c in low_nfe.configs_for("digits", 10, "log")] == [2, 2]
    starts = [c.get("start") for c in low_nfe.configs_for("digits", 10, "mse")]
    assert starts == [None, None, (0.1, 1.5), (0.05, 1.0), (0.15, 1.25)]
    grid = low_nfe.log_warped_grid(157.0, 0.05, 1.0, 10)
    assert len(grid) == 11 and grid[0] == 157.0 and grid[-1] == 0.0 and abs(grid[-2] - 0.05) < 1e-12
    ratios = [a / b for a, b in zip(grid[:-2], grid[1:-1])]
    assert max(ratios) - min(ratios) < 1e-9  # power 1: log-uniform
    assert [c.get("history", 2) for c in low_nfe.configs_for("digits", 20)] == [2, 2, 4]


@pytest.mark.parametrize("argv, says", [(["--learn-nfes", "5"], "needs --learn"),
                                        (["--learn", "--learn-nfes", "5,x"], "comma-separated subset"),
                                        (["--learn", "--learn-nfes", "7"], "give a subset")])
def test_benchmark_learn_nfes_errors(monkeypatch, capsys, argv, says):
    """``--learn-nfes`` without ``--learn`` (it would be ignored) or with NFEs outside the table is a
    one-line usage error naming the value, before anything is solved."""
    low_nfe = _low_nfe()
    monkeypatch.setattr("sys.argv", ["low_nfe.py", *argv])
    with pytest.raises(SystemExit) as exc:
        low_nfe.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--learn-nfes" in err and says in err


def test_init_starts_from_an_artefact(tmp_path, ring):
    """``init``: iteration 0 is the given artefact exactly (its errors are the ``base_*`` ones, and with
    no iterations the result is that solver); a refit from it never ends worse on validation."""
    xc, xv = _prior(ring, 48, 1), _prior(ring, 48, 2)
    first = learn_solver(ring, xc, xv, 4, corrector=True, iters=10, val_every=5)
    path = tmp_path / "first.json"
    first.save(path)
    start = load_learned(path)
    same = learn_solver(ring, xc, xv, 4, corrector=True, iters=0, init=start)
    assert same.spec.sigmas == first.spec.sigmas
    assert same.spec.deltas == first.spec.deltas and same.spec.corrector_deltas == first.spec.corrector_deltas
    assert same.spec.errors["base_validation"] == pytest.approx(first.spec.errors["validation"], rel=1e-12)
    # the reparameterisation reproduces the artefact's grid and weights to round-off
    params = _Params(4, 2, float(ring.schedule.sigma_min), float(ring.schedule.sigma_max), start.sigmas, True,
                     False, last_floor=1e-9)
    params.start_from(start.spec)
    got = torch.stack(params.levels())
    assert torch.allclose(got, start.sigmas, rtol=1e-12, atol=0)
    assert torch.allclose(params.corrector_deltas(), torch.tensor(start.spec.corrector_deltas, dtype=torch.float64),
                          atol=1e-15)
    refit = learn_solver(ring, xc, xv, 4, corrector=True, iters=10, val_every=5, objective="mse", init=start)
    assert refit.spec.errors["validation"]["rmse"] <= refit.spec.errors["base_validation"]["rmse"]
    assert refit.spec.meta["init_spacing"].startswith("init (")


def test_init_must_match(ring, fitted):
    xc, xv = _prior(ring, 16, 1), _prior(ring, 16, 2)
    with pytest.raises(ValueError, match=r"`init` does not match this fit: it has corrector=False \(here True\)"):
        learn_solver(ring, xc, xv, 4, corrector=True, iters=1, init=fitted)
    with pytest.raises(ValueError, match=r"nfe=4 \(here 3\)"):
        learn_solver(ring, xc, xv, 3, iters=1, init=fitted)
    with pytest.raises(ValueError, match="`spacing_init`='logsnr' and `init` both choose"):
        learn_solver(ring, xc, xv, 4, iters=1, init=fitted, spacing_init="logsnr")
    with pytest.raises(TypeError, match="`init` must be a flowode LearnedSolver"):
        learn_solver(ring, xc, xv, 4, iters=1, init="file.json")
    other = gmm_ring(radius=3.0).model(flowode.DiscreteVPSchedule.linear())
    with pytest.raises(ModelMismatchError, match="`init` was fitted to another model"):
        learn_solver(other, xc, xv, 4, iters=1, init=fitted)


def test_explicit_start_grid(ring):
    """``spacing_init`` takes an explicit grid: the built-in ``logsnr`` grid given as numbers is the same
    start (same base errors, same fit) as the name, and it is labelled by its levels."""
    xc, xv = _prior(ring, 32, 1), _prior(ring, 32, 2)
    grid = flowode.sigma_grid(ring.schedule, 4, "logsnr")
    by_name = learn_solver(ring, xc, xv, 4, iters=2, val_every=1, spacing_init="logsnr")
    for given in (grid, grid.tolist(), grid.numpy(), [grid.tolist()]):
        by_grid = learn_solver(ring, xc, xv, 4, iters=2, val_every=1, spacing_init=given)
        assert by_grid.spec.errors == by_name.spec.errors and by_grid.spec.sigmas == by_name.spec.sigmas
        assert by_grid.spec.meta["init_spacing"].startswith("grid (")
    both = learn_solver(ring, xc, xv, 4, iters=1, val_every=1, spacing_init=["karras", grid])
    assert set(both.spec.meta["init_objectives"]) == {"karras", by_grid.spec.meta["init_spacing"]}


@pytest.mark.parametrize("bad", ["short", "top", "order", "end", "floor"])
def test_explicit_start_grid_refused(ring, bad):
    """A start grid that is not ``nfe + 1`` decreasing levels from ``sigma_max`` to 0 (the last nonzero
    one at least ``sigma_min``) is an error naming ``spacing_init`` and the rule."""
    xc, xv = _prior(ring, 8, 1), _prior(ring, 8, 2)
    g = flowode.sigma_grid(ring.schedule, 4, "logsnr").tolist()
    grid = {"short": g[1:], "top": [g[0] * 0.9] + g[1:], "order": [g[0], g[2], g[1], g[3], 0.0],
            "end": g[:-1] + [g[-2] / 2], "floor": g[:-2] + [ring.schedule.sigma_min / 2, 0.0]}[bad]
    with pytest.raises(ValueError, match=r"`spacing_init` grid .* strictly decreasing levels from sigma_max"):
        learn_solver(ring, xc, xv, 4, iters=1, spacing_init=grid)


def test_unknown_start_spacing_refused(ring):
    """An unknown spacing name in ``spacing_init`` is an error naming it (it was skipped silently)."""
    xc, xv = _prior(ring, 8, 1), _prior(ring, 8, 2)
    with pytest.raises(ValueError, match="`spacing_init` 'logsnrr' is not a spacing; give one of"):
        learn_solver(ring, xc, xv, 4, iters=1, spacing_init=["logsnr", "logsnrr"])
