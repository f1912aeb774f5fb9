"""Scaling laws: the fitter against published and synthetic laws, the sweep as a user runs it, and bad input.

tests/fixtures/chinchilla_points.csv: the 245 (model size, training FLOP, loss) points that Epoch AI extracted
from Figure 4 of Hoffmann et al. 2022 for their replication (Besiroglu, Erdil, Barnett, You 2024, "Chinchilla
Scaling: A replication attempt"); published measurements, carried as a fixture."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from trainlab.errors import UserError
from trainlab.scaling import fit, law as law_lib, points as points_lib, sweep as sweep_lib

CHINCHILLA = Path(__file__).parent / "fixtures" / "chinchilla_points.csv"


def cli(*args: str) -> tuple[int, str, str]:
    r = run_cli(*args)
    return r.returncode, r.stdout, r.stderr


def synthetic(path: Path, true: law_lib.Law, sizes, tokens, noise: float = 0.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = ["params,tokens,loss"]
    for n in sizes:
        for d in tokens:
            rows.append(f"{n},{d},{true.loss(n, d) * math.exp(noise * rng.standard_normal())}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_epochs_refit_of_chinchilla_is_recovered_within_their_standard_errors():
    code, out, err = cli("scaling", "fit", str(CHINCHILLA), "--drop-highest", "5", "--bootstrap", "0", "--json")
    assert code == 0, err
    got = json.loads(out)
    epoch = law_lib.EPOCH
    for k in law_lib.KEYS:
        assert abs(got[k] - getattr(epoch, k)) <= epoch.se[k], (k, got[k], getattr(epoch, k))
    assert got["fit"]["points"] == 240 and got["fit"]["converged"] > 0.9 * got["fit"]["starts"]
    assert set(got["se"]) == set()  # --bootstrap 0: no standard errors, never made-up ones


def test_a_synthetic_law_is_recovered_with_bootstrap_errors_that_cover_it(tmp_path):
    true = law_lib.Law(1.7, 300.0, 900.0, 0.32, 0.30)
    f = synthetic(tmp_path / "p.csv", true, np.geomspace(1e6, 1e9, 7), np.geomspace(1e8, 1e11, 7), noise=0.003)
    got, info = fit.parametric(points_lib.read_csv(f), bootstrap=12)
    # 0.3% noise on 49 points: over noise seeds the fitted E spreads by ~0.02 and alpha, beta by ~0.003
    assert got.E == pytest.approx(1.7, abs=0.06) and got.alpha == pytest.approx(0.32, abs=0.01)
    assert got.beta == pytest.approx(0.30, abs=0.01)
    assert info["bootstrap"]["resamples"] == 12 and info["bootstrap"]["converged"] >= 10
    assert 1e-3 < got.se["E"] < 0.1 and 1e-4 < got.se["alpha"] < 0.02 and 1e-4 < got.se["beta"] < 0.02
    # noiseless: exact; and the runs left out by --max-flops are predicted from the others
    f0 = synthetic(tmp_path / "p0.csv", true, np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6))
    exact, _ = fit.parametric(points_lib.read_csv(f0))
    for k in law_lib.KEYS:
        assert getattr(exact, k) == pytest.approx(getattr(true, k), rel=2e-3)
    code, out, err = cli("scaling", "fit", str(f0), "--bootstrap", "0", "--max-flops", "1e19", "--json",
                         "--predict", "1e9", "1e11")
    got = json.loads(out)
    assert code == 0 and got["fit"]["points"] == sum(6 * n * d <= 1e19 for n in np.geomspace(1e6, 1e9, 6)
                                                     for d in np.geomspace(1e8, 1e11, 6))
    assert got["predictions"][0]["loss"] == pytest.approx(true.loss(1e9, 1e11), rel=1e-3)


def test_the_batched_objective_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logn, logd = rng.uniform(13, 20, 40), rng.uniform(18, 25, 40)
    logl = np.log(law_lib.EPOCH.loss(np.exp(logn), np.exp(logd))) + rng.normal(0, 0.01, 40)
    theta = np.array([[6.0, 7.0, 0.6, 0.35, 0.37], [3.0, 12.0, -0.2, 0.8, 0.5]])
    f, g = fit._objective(theta, logn, logd, logl, 1e-3)
    for j in range(5):
        e = np.zeros(5)
        e[j] = 1e-6
        num = (fit._objective(theta + e, logn, logd, logl, 1e-3)[0] - fit._objective(theta - e, logn, logd, logl,
                                                                                       1e-3)[0]) / 2e-6
        np.testing.assert_allclose(g[:, j], num, rtol=1e-4, atol=1e-9)


def test_isoflop_profiles_and_power_laws_find_the_laws_exponents(tmp_path):
    true = law_lib.Law(1.7, 400.0, 400.0, 0.34, 0.28)
    rows = ["params,flops,loss"]
    for c in (1e18, 1e19, 1e20, 1e21):
        n_opt, _ = true.optimal(c)
        for n in n_opt * np.geomspace(0.25, 4, 7):
            rows.append(f"{n},{c},{true.loss(n, c / (6 * n))}")
    (tmp_path / "iso.csv").write_text("\n".join(rows))
    p = points_lib.read_csv(tmp_path / "iso.csv")
    a2 = fit.isoflop_fit(p)
    assert a2["a"] == pytest.approx(true.exponents[0], abs=0.02) and len(a2["profiles"]) == 4
    # Kaplan's L(N) on a pure power law (no irreducible term) recovers its exponent and X_c
    rows = ["params,tokens,loss"] + [f"{n},1e12,{(8.8e13 / n) ** 0.076}" for n in np.geomspace(1e5, 1e9, 9)]
    (tmp_path / "kap.csv").write_text("\n".join(rows))
    k = fit.power_laws(points_lib.read_csv(tmp_path / "kap.csv"))["N"]
    assert k["alpha"] == pytest.approx(0.076, rel=1e-6) and k["x_c"] == pytest.approx(8.8e13, rel=1e-4)
    assert "skipped" in fit.power_laws(points_lib.read_csv(tmp_path / "kap.csv"))["D"]  # one token budget
    # L(N) takes each size's best budget: the undertrained budgets of a size are not points of the frontier
    rows = ["params,tokens,loss"] + [f"{n},{d},{(8.8e13 / n) ** 0.076 + 1e3 / d ** 0.5}"
                                     for n in np.geomspace(1e5, 1e9, 5) for d in (1e6, 1e8, 1e12)]
    (tmp_path / "kap2.csv").write_text("\n".join(rows))
    k = fit.power_laws(points_lib.read_csv(tmp_path / "kap2.csv"))["N"]
    assert k["points"] == 5 and k["alpha"] == pytest.approx(0.076, rel=1e-3)


@pytest.mark.parametrize("rows,expect", [
    ("params,tokens,loss\n1e6,1e9,3.1\n2e6,-1e9,3.0\n", "line 3: tokens must be a positive finite number; got '-1e9'"),
    ("params,tokens,loss\n1e6,1e9,nan\n", "line 2: loss must be a positive finite number; got 'nan'"),
    ("params,tokens,loss\n1e6,1e9,inf\n", "got 'inf'"),
    ("params,tokens,loss\n1e6,,3\n", "got ''"),
    ("size,loss\n1,2\n", "needs columns for parameters, loss, and tokens or FLOPs; it has 'size', 'loss'"),
    ("params,tokens,loss\n", "has a header but no points"),
    ("", "needs columns"),
])
def test_bad_points_are_one_line_errors(tmp_path, rows, expect):
    (tmp_path / "p.csv").write_text(rows)
    code, out, err = cli("scaling", "fit", str(tmp_path / "p.csv"))
    assert code == 2 and expect in err and err.count("\n") == 2 and out == "", err


def test_points_that_cannot_be_fitted_say_why(tmp_path):
    true = law_lib.EPOCH
    # Where only the parametric law is out of reach, the rest is still the answer, with the reason as a note.
    one = synthetic(tmp_path / "one.csv", true, [1e8], np.geomspace(1e9, 1e11, 8))
    code, out, err = cli("scaling", "fit", str(one))
    assert code == 0 and "note: L(N, D) not fitted: every point has the same size" in out and "L(D): alpha" in out
    few = synthetic(tmp_path / "few.csv", true, [1e8, 1e9], [1e9, 1e10])
    code, out, err = cli("scaling", "fit", str(few), "--json")
    r = json.loads(out)
    assert code == 0 and "E" not in r and "needs at least 6 points; got 4" in r["parametric"]["skipped"]
    assert r["approach3"] == {"skipped": "no parametric law"} and "alpha" in r["kaplan"]["C"]
    (tmp_path / "few.json").write_text(out)  # such a fit is no law to plan with, and --predict needs one
    code, _, err = cli("plan", "--flops", "1e20", "--law", str(tmp_path / "few.json"))
    assert code == 2 and "holds no parametric law L(N, D)" in err and err.count("\n") == 2, err
    code, _, err = cli("scaling", "fit", str(few), "--predict", "1e9", "1e10")
    assert code == 2 and "--predict needs the parametric law L(N, D)" in err, err
    flat = tmp_path / "flat.csv"  # loss that does not fall with size: degenerate, not a nonsense law
    flat.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{3 + 1e3 / d ** 0.3}\n" for n in (1e6, 1e7, 1e8)
                                                        for d in (1e9, 1e10, 1e11)))
    code, out, err = cli("scaling", "fit", str(flat), "--bootstrap", "0")
    assert code == 0 and "not fitted: the fit is degenerate: alpha" in out and "its 3 values span 100x" in out
    # Points that determine nothing at all are an error: the parametric law's reason.
    two = tmp_path / "two.csv"
    two.write_text("params,tokens,loss\n1e6,1e9,3.0\n2e6,1e9,2.9\n")
    code, out, err = cli("scaling", "fit", str(two))
    assert code == 2 and "needs at least 6 points; got 2" in err and out == "", err
    code, _, err = cli("scaling", "fit", str(tmp_path / "missing.csv"))
    assert code == 2 and "does not exist" in err


def test_runs_left_out_by_a_limit_are_predicted_and_compared(tmp_path):
    true = law_lib.EPOCH
    f = synthetic(tmp_path / "p.csv", true, np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e11, 4))
    code, out, err = cli("scaling", "fit", str(f), "--bootstrap", "0", "--max-params", "5e8", "--predict", "1e9",
                         "1e11", "--predict", "2e9", "1e11", "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    assert "runs left out of the fit, predicted by it:" in out and out.count("N = 1e+09, D = ") == 4
    assert "(+0.0%)" in out or "(-0.0%)" in out
    lines = [x for x in out.splitlines() if x.startswith("predicted loss of N = 1e+09 on D = 1e+11")]
    assert len(lines) == 1 and "measured" in lines[0] and "left out of the fit" in lines[0]
    assert "measured" not in next(x for x in out.splitlines() if x.startswith("predicted loss of N = 2e+09"))
    assert (tmp_path / "plots" / "scaling_prediction.png").is_file()
    # A limit that leaves too few points says which option to raise.
    code, out, err = cli("scaling", "fit", str(f), "--max-params", "2e7")  # enough for L(D), not for L(N, D)
    assert code == 0 and "note: --max-params kept 4 of the 20 runs, too few for the law" in out, out + err
    code, _, err = cli("scaling", "fit", str(f), "--max-flops", "1e17")
    assert code == 2 and "got 1" in err and "--max-flops kept 1 of the 20 runs: raise it" in err, err


def test_plan_says_when_it_extrapolates_a_fitted_law(tmp_path):
    f = synthetic(tmp_path / "p.csv", law_lib.EPOCH, np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e11, 4))
    code, out, _ = cli("scaling", "fit", str(f), "--bootstrap", "0", "--json")
    fitted = json.loads(out)["fitted"]
    assert code == 0 and fitted["params"] == [1e7, 1e9] and fitted["flops"] == [6e16, 6e20]
    (tmp_path / "law.json").write_text(out)
    code, out, _ = cli("plan", "--flops", "1e20", "--law", str(tmp_path / "law.json"))
    assert code == 0 and "note:" not in out
    code, out, _ = cli("plan", "--flops", "1e24", "--law", str(tmp_path / "law.json"), "--json")
    notes = json.loads(out)["notes"]
    assert code == 0 and notes[0].startswith("1e+24 FLOPs is 1.67e+03x outside the fitted runs (6e+16 to 6e+20)")
    code, out, _ = cli("plan", "--flops", "1e24")  # a published law carries no range: no note
    assert code == 0 and "note:" not in out


def test_a_fit_that_does_not_converge_is_reported(tmp_path, monkeypatch):
    f = synthetic(tmp_path / "p.csv", law_lib.EPOCH, np.geomspace(1e6, 1e9, 4), np.geomspace(1e8, 1e11, 4))
    real = fit._minimize
    monkeypatch.setattr(fit, "_minimize", lambda starts, args: real(starts, args, max_iter=2))
    with pytest.raises(UserError, match="did not converge from any of 4500 starts"):
        fit.parametric(points_lib.read_csv(f))


def test_shapes_count_non_embedding_parameters_exactly():
    import torch

    from trainlab import config
    from trainlab.models.gpt import GPT

    cfg = config.load_recipe("stdlib-scaling").model
    for text in ("20k", "300k", "3x96", "2M"):
        s = sweep_lib.parse_size(cfg, text)
        with torch.device("meta"):
            m = GPT(cfg.model_copy(update={"n_layer": s.n_layer, "n_embd": s.n_embd, "n_head": s.n_head}), 512, 64)
        total = sum(p.numel() for p in m.parameters())
        assert s.params == total - m.wte.weight.numel()
        if "x" not in text:
            target = sweep_lib.parse_number(text, "--sizes")
            assert 0.7 < s.params / target < 1.4
    for bad in ("0", "-5k", "lots", "0x64"):
        with pytest.raises(UserError):
            sweep_lib.parse_size(cfg, bad)


def sweep_args(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["scaling", "sweep", "stdlib-scaling", f"data.cache_dir={cache}", "data.max_bytes=200000",
            "data.split=tail", "data.vocab_size=300", "data.batch_size=8", "loop.eval_batches=2",
            "--sizes", "1x16", "1x32", "2x32", "--tokens", "3000", "6000", "--lrs", "3e-3", "--out", str(out),
            *extra]


@pytest.mark.slow
def test_a_sweep_trains_its_grid_once_and_fits(tmp_path):
    out = tmp_path / "sweep"
    code, stdout, err = cli(*sweep_args(out, tmp_path / "cache"))
    assert code == 0, err
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 6 and all((out / "runs" / r / "model" / "config.json").is_file() for r in runs)
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["lr_choice"] == {"L1-C16": 3e-3, "L1-C32": 3e-3, "L2-C32": 3e-3}
    p = points_lib.read_csv(out)
    finals = p.finals()
    assert len(finals) == 6 and set(finals.tokens) == {8 * 64 * 6, 8 * 64 * 12}  # whole steps of 512 tokens
    assert np.all(finals.flops == 6 * finals.params * finals.tokens)
    header = (out / "points.csv").read_text().splitlines()[0].split(",")
    assert {"params_total", "flops_model"} <= set(header)
    # Rerunning the same command trains nothing: every run is finished.
    code, stdout, err = cli(*sweep_args(out, tmp_path / "cache"))
    assert code == 0 and "val loss" not in stdout
    # ... and `fit` reads the folder (6 points: enough for the parametric law, or a clear degenerate-fit line).
    code, stdout, err = cli("scaling", "fit", str(out), "--bootstrap", "0", "--json")
    # six tiny runs may or may not pin down five constants; either way the fit read the folder's 6 final points
    assert (code == 0 and json.loads(stdout)["fit"]["points"] == 6 and "non-embedding" in json.loads(stdout)[
        "source"]) or (code == 2 and "over these 6 points" in err), err
    # A run killed before its first checkpoint has nothing to resume: it trains again from the start.
    victim = out / "runs" / runs[0]
    shutil.rmtree(victim / "checkpoints")
    summary = json.loads((victim / "summary.json").read_text())
    (victim / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    code, stdout, err = cli(*sweep_args(out, tmp_path / "cache"))
    assert code == 0 and stdout.count("val loss") == 1 and runs[0] in stdout and "resumed" not in stdout, err
    # A second call with another size adds it: points.csv keeps the first sizes.
    more = sweep_args(out, tmp_path / "cache")
    more[more.index("--sizes") + 1:more.index("--tokens")] = ["2x48"]
    code, stdout, err = cli(*more)
    assert code == 0 and stdout.count("val loss") == 2, err
    assert len(points_lib.read_csv(out).finals()) == 8
    # Another recipe into the same folder is refused.
    code, _, err = cli("scaling", "sweep", "stdlib-gpt", "--sizes", "1x16", "--tokens", "1000", "--out", str(out))
    assert code == 2 and "is a sweep of stdlib-scaling" in err


@pytest.mark.slow
def test_a_sweep_searches_the_learning_rate_at_each_sizes_smallest_budget(tmp_path):
    out = tmp_path / "sweep"
    args = sweep_args(out, tmp_path / "cache")
    args[args.index("--sizes") + 1:args.index("--tokens")] = ["1x16"]
    args[args.index("--lrs") + 1] = "1e-4"
    args[args.index("--lrs") + 2:args.index("--lrs") + 2] = ["1e-2", "1e4"]  # 1e4 diverges: an answer, not a crash
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert err.startswith("warning: 2 run(s) over 1 size(s) and 2 budget(s): L(N, D) needs 6 runs or more")
    assert "L1-C16-D3e03-lr1e04" in stdout and "diverged: the gradient norm became nan" in stdout
    runs = sorted(p.name for p in (out / "runs").iterdir())
    searched = [r for r in runs if "-D3e03-" in r]
    assert len(searched) == 3 and len(runs) == 4  # three rates at 3,000 tokens, the best at 6,000
    meta = json.loads((out / "sweep.json").read_text())
    chosen = meta["lr_choice"]["L1-C16"]
    losses = {r: json.loads((out / "runs" / r / "summary.json").read_text())["metrics"]["val"]["loss"]
              for r in searched if "lr1e04" not in r}
    assert chosen == 1e-2 and min(losses, key=losses.get).endswith("lr0.01")
    assert any(r.startswith("L1-C16-D6e03-lr0.01") for r in runs)
    assert len(points_lib.read_csv(out).finals()) == 2  # the losing rate is not a point of the law


@pytest.mark.parametrize("args,expect", [
    (["--sizes", "1x16", "--tokens", "1000", "--flops", "1e9"], "not allowed with argument"),
    (["--sizes", "tiny", "--tokens", "1000"], "--sizes expects positive numbers such as 20k"),
    (["--sizes", "1x16", "--tokens", "0"], "--tokens expects positive numbers"),
    (["--sizes", "1x16", "--tokens", "1000", "--lrs", "nan"], "--lrs expects positive numbers"),
])
def test_bad_sweep_arguments(tmp_path, args, expect):
    code, _, err = cli("scaling", "sweep", "stdlib-scaling", *args, "--out", str(tmp_path / "s"))
    assert code == 2 and expect in err, err


def test_a_sweep_of_a_model_that_is_not_a_language_model_is_refused(tmp_path):
    code, _, err = cli("scaling", "sweep", "digits-mlp", "--sizes", "1x16", "--tokens", "1000",
                           "--out", str(tmp_path / "s"))
    assert code == 2 and "trains language models" in err


def test_a_sweep_folder_is_checked_and_continued_with_the_union_of_its_grids(tmp_path):
    args = (["1x16", "1x32"], ["3k", "6k"], [], ["1e-3", "2e-3"])
    sw = sweep_lib.Sweep(tmp_path / "s", "stdlib-scaling", [], *args)
    sw.write_meta()
    # A second call with other rates keeps the first ones in each size's search (as it keeps sizes and budgets).
    sw = sweep_lib.Sweep(tmp_path / "s", "stdlib-scaling", [], ["2x32"], ["3k"], [], ["4e-3"])
    assert sw.lrs == [1e-3, 2e-3, 4e-3] and len(sw.sizes) == 3 and sw.budgets == [3000, 6000]
    # A sweep whose sweep.json was deleted (as the damaged-file error advises) is still a sweep.
    (tmp_path / "s" / "runs").mkdir()
    (tmp_path / "s" / "sweep.json").unlink()
    assert sweep_lib.Sweep(tmp_path / "s", "stdlib-scaling", [], *args).lrs == [1e-3, 2e-3]
    # Grid overrides, dotted or as an inline table, are not the runs' overrides.
    sw = sweep_lib.Sweep(tmp_path / "t", "stdlib-scaling", ['sweep={sizes=["1x16"], tokens=["3k"]}',
                                                            "loop.log_every=5"], [])
    assert [z.name for z in sw.sizes] == ["L1-C16"] and sw.overrides == ["loop.log_every=5"]
    # A folder that is not a sweep's (an ordinary run, a file) is refused rather than written into.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    for out, says in ((tmp_path / "run", "holds other files and no sweep.json"), (tmp_path / "run" / "summary.json",
                                                                                   "is a file")):
        with pytest.raises(UserError, match=says):
            sweep_lib.Sweep(out, "stdlib-scaling", [], *args)
    # An override given after an option is read by argparse as that option's value: say where it goes.
    code, _, err = cli("scaling", "sweep", "stdlib-scaling", "--sizes", "1x16", "--tokens", "3k", "--lrs", "1e-3",
                       "data.max_bytes=1000", "--out", str(tmp_path / "o"))
    assert code == 2 and "got the recipe override 'data.max_bytes=1000'" in err and "before the options" in err
    # ... while one after the last option is an override, as for `trainlab train` (here a bad one, to stop early).
    code, _, err = cli("scaling", "sweep", "stdlib-scaling", "--sizes", "1x16", "--tokens", "3k", "--out",
                       str(tmp_path / "o"), "data.max_bytes=lots")
    assert code == 2 and "data.max_bytes" in err and "unrecognized" not in err, err
    code, _, err = cli("scaling", "sweep", "stdlib-scaling", "--sizes", "1x16", "--tokens", "3k", "--lrs", "-1",
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "e.g. --lrs 1e-3 3e-3 1e-2" in err, err


def test_the_recipes_sweep_table_gives_the_grid_and_the_command_line_wins_key_by_key(tmp_path):
    from trainlab import config

    recipe = tmp_path / "grid.toml"
    base = config.find_recipe("stdlib-scaling").read_text().split("[sweep]")[0]
    recipe.write_text(base + '[sweep]\nsizes = ["1x16", 30000, "2x32"]\ntokens = ["3k", 6e3]\nlrs = [1e-3]\n')
    sw = sweep_lib.Sweep(tmp_path / "a", str(recipe), [], [])
    assert [s.name for s in sw.sizes] == ["L1-C16", "L1-C48", "L2-C32"] and sw.budgets == [3000, 6000]
    assert sw.budget_kind == "tokens" and sw.lrs == [1e-3] and sw.band == (0.0, math.inf)
    # Each option given replaces its key; --flops replaces the table's budgets whatever their kind.
    sw = sweep_lib.Sweep(tmp_path / "b", str(recipe), [], ["2x64"], flops=["1e12"], lrs=["2e-3"],
                         tokens_per_param=(1, 1e6))
    assert [s.name for s in sw.sizes] == ["L2-C64"] and sw.budget_kind == "flops" and sw.budgets == [1e12]
    assert sw.lrs == [2e-3] and sw.band == (1, 1e6)
    # Overrides reach the table like any key; a bad value names the key it came from.
    sw = sweep_lib.Sweep(tmp_path / "c", str(recipe), ['sweep.tokens=["9k"]', "data.batch_size=8"], [])
    assert sw.budgets == [9000] and sw.overrides == ["data.batch_size=8"]  # the runs' overrides: no grid keys
    for override, expect in (('sweep.tokens=["0"]', "sweep.tokens expects positive numbers"),
                             ('sweep.sizes=["huge"]', "sweep.sizes expects positive numbers"),
                             ('sweep.flops=["1e9"]', "got 3 size\\(s\\), 2 token and 1 FLOP budget\\(s\\)"),
                             ("sweep.tokens_per_param=[5, 1]", "sweep.tokens_per_param expects LO < HI"),
                             ("sweep.tokens_per_param=[5]", "must be two numbers"),
                             ("sweep.size=[1]", "unknown key 'sweep.size'")):
        with pytest.raises(UserError, match=expect):
            sweep_lib.Sweep(tmp_path / "d", str(recipe), [override], [])
    # A recipe without the table, and no options: one line saying what is missing.
    code, _, err = cli("scaling", "sweep", "stdlib-gpt", "--out", str(tmp_path / "e"))
    assert code == 2 and "a sweep needs sizes and either tokens or flops" in err and "[sweep] table" in err, err
    # The bundled sweep recipe carries the benchmark's grid; --keys documents the table; ordinary runs' config.toml
    # has no empty [sweep].
    cfg = config.load_recipe("stdlib-scaling")
    assert cfg.sweep.sizes and cfg.sweep.tokens and "[sweep]" in cfg.to_toml()
    assert "[sweep]" not in config.load_recipe("stdlib-gpt").to_toml()
    code, out, _ = cli("recipes", "--keys")
    assert code == 0 and "sweep.tokens_per_param = null" in out and "[sweep]" in out


def test_emergence_scores_exact_match_and_digits_on_problems_the_corpus_lacks(tmp_path, monkeypatch):
    from trainlab.scaling import emergence as em

    seen = em.write_corpus(tmp_path / "add.txt", 2000, 3, seed=0)
    lines = (tmp_path / "add.txt").read_text().splitlines()
    assert len(lines) == 2000 and all(int(a) + int(b) == int(c) for a, b, c in
                                      (line.replace("=", "+").split("+") for line in lines))
    problems, fresh = em.held_out(50, 3, seen)
    assert fresh and len(problems) == 50 and not set(problems) & seen and all(len(str(a)) == 3 for a, _ in problems)
    problems, fresh = em.held_out(50, 1, seen)  # 100 one-digit problems in all: most are in the corpus
    assert not fresh and len(problems) == 50
    assert em.digit_score("1234", "1234") == 1.0 and em.digit_score("1244", "1234") == 0.75
    assert em.digit_score("234", "1234") == 0.75 and em.digit_score("", "12") == 0.0

    from trainlab.data.tokenizer import CharTokenizer

    tok = CharTokenizer.train(["0123456789+=\n"])
    import torch

    from trainlab import generate as gen

    def fake_generate(model, prompts, max_new, temperature=1.0, eos_id=None, **kw):
        """A model that answers a + b + model.off, greedily."""
        out = []
        for p in prompts:
            asked.append(tok.decode(p))
            a, b = tok.decode(p).rstrip("=").split("+")
            out.append(tok.encode(str(int(a) + int(b) + model.off)))
        return out

    asked = []
    monkeypatch.setattr(gen, "generate", fake_generate)
    right, wrong = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    right.off, wrong.off = 0, 1
    assert em.score(right, tok, problems)["exact_match"] == 1.0
    s = em.score(wrong, tok, [(12, 30)])  # 43 instead of 42: one digit of two
    assert s == {"exact_match": 0.0, "digit_accuracy": 0.5, "problems": 1}
    # A problem is asked at the start of a line, as the corpus has it: `3+4=` alone could end `123+4=`.
    assert asked[-1] == "\n12+30=" and all(q.startswith("\n") and q.count("\n") == 1 for q in asked)


def _long_sweep(out: Path, cache: Path) -> list[str]:
    args = sweep_args(out, cache)
    args[args.index("--sizes") + 1:args.index("--lrs")] = ["1x16", "1x32", "--tokens", "12000", "24000"]
    return args


def _sweep_process(out: Path, cache: Path) -> subprocess.Popen:
    args = _long_sweep(out, cache)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainlab", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_processes_share_a_sweep_and_a_killed_sweep_resumes(tmp_path):
    warm = sweep_args(tmp_path / "warm", tmp_path / "cache")
    warm[warm.index("--sizes") + 1:warm.index("--lrs")] = ["1x16", "--tokens", "512"]
    assert cli(*warm)[0] == 0  # tokenize once, before two processes race for the cache
    out = tmp_path / "shared"
    a, b = _sweep_process(out, tmp_path / "cache"), _sweep_process(out, tmp_path / "cache")
    logs = [p.communicate(timeout=600) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, logs
    trained = [line.split()[0] for o, _ in logs for line in o.splitlines() if "val loss" in line]
    assert sorted(trained) == sorted(p.name for p in (out / "runs").iterdir()) and len(trained) == 4
    assert all(len([o for o, _ in logs if name in o]) == 1 for name in trained)  # each run trained by one of them
    assert len(points_lib.read_csv(out).finals()) == 4

    killed = tmp_path / "killed"
    p = _sweep_process(killed, tmp_path / "cache")
    deadline = time.time() + 300
    while not list(killed.glob("runs/*/checkpoints/last")) and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = next(killed.glob("runs/*/checkpoints/last")).parent.parent.name
    code, stdout, err = cli(*_long_sweep(killed, tmp_path / "cache"))
    assert code == 0, err
    assert f"{first}" in stdout and "resumed" in stdout.split(first)[1].splitlines()[0]
    assert len(points_lib.read_csv(killed).finals()) == 4


def test_a_best_rate_at_the_edge_of_the_grid_extends_the_search(tmp_path):
    out = tmp_path / "sweep"
    args = sweep_args(out, tmp_path / "cache")
    args[args.index("--sizes") + 1:args.index("--tokens")] = ["1x16"]
    args[args.index("--tokens") + 1:args.index("--lrs")] = ["3000"]
    args[args.index("--lrs") + 1:args.index("--out")] = ["1e-4", "3e-4"]  # far too low for 6 steps: the top wins
    code, stdout, err = cli(*args)
    assert code == 0, err
    meta = json.loads((out / "sweep.json").read_text())
    tried = meta["lr_search"]["L1-C16"]
    assert list(tried) == ["0.0001", "0.0003", "0.0006", "0.0012"]  # doubled twice past the edge, then stops
    assert all(math.isfinite(v) for v in tried.values()) and tried["0.0012"] < tried["0.0003"]
    assert meta["lr_choice"]["L1-C16"] == pytest.approx(1.2e-3)
