"""`trainlab plan`: compute-optimal planning and cost, checked against the published GPT-3, Gopher and Chinchilla
numbers, brute-force minimizations, and bad input (exit status 2)."""

import json
import math

import pytest

from tests.conftest import run_cli
from trainlab.errors import UserError
from trainlab.scaling import plan as P
from trainlab.scaling.law import EPOCH, HOFFMANN

LAWS = [HOFFMANN, EPOCH]


def test_gpt3_costs_about_3_million_v100_hours():
    # GPT-3: 175e9 parameters on 300e9 tokens; 6 N D = 6 * 175e9 * 300e9 = 3.15e23 FLOPs. At 28 TFLOP/s sustained
    # per V100 (0.224 of its 125e12) that is 3.15e23 / 28e12 / 3600 = 3.125e6 V100-hours, $4.69M at $1.5/hour.
    by_name = P.plan(params=175e9, tokens=300e9, gpu="v100", mfu=0.224, price=1.5)
    by_peak = P.plan(params=175e9, tokens=300e9, peak_flops=28e12, mfu=1, price=1.5)
    for out in (by_name, by_peak):
        assert out["mode"] == "given"
        assert out["flops"] == pytest.approx(3.15e23, rel=1e-12)
        assert out["gpu_hours"] == pytest.approx(3.125e6, rel=1e-9)
        assert out["hours"] == pytest.approx(3.125e6, rel=1e-9)  # one GPU: wall hours = GPU-hours
        assert 4.6e6 < out["cost_usd"] < 4.7e6
    assert by_name["gpu"]["peak_flops"] == 125e12 and by_name["gpu"]["source"] == "NVIDIA Tesla V100 datasheet"
    # 1024 GPUs: the same GPU-hours, 1024 times fewer wall hours (about 127 days)
    cluster = P.plan(params=175e9, tokens=300e9, gpu="v100", gpus=1024, mfu=0.224)
    assert cluster["gpu_hours"] == pytest.approx(3.125e6, rel=1e-9)
    assert cluster["hours"] == pytest.approx(3.125e6 / 1024, rel=1e-9)


def test_chinchilla_beats_gopher_on_about_the_same_budget():
    chinchilla = 6 * 70e9 * 1.4e12  # 5.88e23
    gopher = 6 * 280e9 * 300e9  # 5.04e23
    assert abs(chinchilla / gopher - 1) < 0.2
    for law in LAWS:  # 4x fewer parameters, 4.7x more tokens: lower predicted loss under both laws
        assert P.plan(params=70e9, tokens=1.4e12, law=law)["loss"] < P.plan(params=280e9, tokens=300e9, law=law)["loss"]

    # The compute-optimal model for Gopher's budget is far smaller than Gopher under both laws.
    hoff = P.plan(gopher, law="hoffmann")
    epoch = P.plan(gopher, law="epoch")
    assert hoff["flops"] == pytest.approx(gopher) and hoff["params"] * hoff["tokens"] * 6 == pytest.approx(gopher)
    # Hoffmann et al.'s published approach-3 numbers give N = 30.3B, D = 2.77T: 91.5 tokens per parameter, not the
    # ~20 of their approaches 1 and 2 and of Chinchilla itself. That inconsistency is what Besiroglu et al. 2024
    # found; their refit (EPOCH) gives N = 67.5B, D = 1.25T: 18.5 tokens per parameter, close to Chinchilla's
    # 70B on 1.4T (20 per parameter).
    assert 20e9 < hoff["params"] < 40e9 and 60 < hoff["tokens_per_param"] < 120
    assert 55e9 < epoch["params"] < 80e9 and 15 < epoch["tokens_per_param"] < 25
    # Each law's optimum predicts a lower loss than Gopher as trained, on Gopher's own budget
    assert hoff["loss"] < P.plan(params=280e9, tokens=300e9, law="hoffmann")["loss"]
    assert epoch["loss"] < P.plan(params=280e9, tokens=300e9, law="epoch")["loss"]


@pytest.mark.parametrize("law", LAWS, ids=["hoffmann", "epoch"])
@pytest.mark.parametrize("flops", [1e19, 1e23, 1e26])
def test_optimal_matches_brute_force(law, flops):
    n_opt, d_opt = law.optimal(flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops, rel=1e-12)
    # 4001 points over log N in [N*/100, 100 N*], D = C / 6N: steps of 10^(4/4000) = 1.0023
    grid = [n_opt * 10 ** (-2 + 4 * i / 4000) for i in range(4001)]
    best = min(grid, key=lambda n: law.loss(n, flops / (6 * n)))
    assert best == pytest.approx(n_opt, rel=3e-3)
    assert law.loss(n_opt, d_opt) <= law.loss(best, flops / (6 * best)) + 1e-12
    out = P.plan(flops, law=law)
    assert out["params"] == n_opt and out["tokens"] == pytest.approx(d_opt, rel=1e-12)


def test_params_or_tokens_alone_spend_the_rest_of_the_budget():
    out = P.plan(1e23, params=7e9)
    assert out["tokens"] == pytest.approx(1e23 / (6 * 7e9), rel=1e-12) and out["mode"] == "given"
    out = P.plan(1e23, tokens=2e12)
    assert out["params"] == pytest.approx(1e23 / (6 * 2e12), rel=1e-12)
    # the optimum's loss is below that of either lopsided model on the same budget
    assert P.plan(1e23)["loss"] < min(P.plan(1e23, params=7e9)["loss"], P.plan(1e23, params=100e9)["loss"])


@pytest.mark.parametrize("law", LAWS, ids=["hoffmann", "epoch"])
def test_inference_aware_model_is_smaller_trained_longer_same_loss_fewer_flops(law):
    c, t = 1e23, 2e12  # serve 2 trillion tokens, LLaMA-scale traffic
    out = P.plan(c, law=law, inference_tokens=t)
    ia = out["inference_aware"]
    assert ia["params"] < out["params"] and ia["tokens"] > out["tokens"]
    assert ia["loss"] == pytest.approx(out["loss"], rel=1e-6)
    assert ia["flops"] > c  # it trains longer than the budget ...
    assert ia["total_flops"] < out["total_flops"]  # ... and saves more than that at inference
    assert out["total_flops"] == pytest.approx(c + 2 * out["params"] * t)
    assert ia["total_flops"] == pytest.approx(6 * ia["params"] * ia["tokens"] + 2 * ia["params"] * t)
    assert out["total_flops_saving"] == pytest.approx(1 - ia["total_flops"] / out["total_flops"])
    assert 0 < out["total_flops_saving"] < 1

    # the minimum along the iso-loss curve, by brute force over log N
    def total(n):
        return 6 * n * P.iso_loss_tokens(law, out["loss"], n) + 2 * n * t

    grid = [out["params"] * 10 ** (-3 * i / 3000) for i in range(3001)]  # N*/1000 .. N*
    best = min(grid, key=total)
    assert total(ia["params"]) <= total(best) * (1 + 1e-12)
    assert best == pytest.approx(ia["params"], rel=5e-3)

    # more inference, smaller model
    assert P.plan(c, law=law, inference_tokens=20 * t)["inference_aware"]["params"] < ia["params"]


@pytest.mark.parametrize("law", LAWS, ids=["hoffmann", "epoch"])
def test_inference_aware_without_inference_is_chinchilla(law):
    out = P.plan(1e22, law=law, inference_tokens=0)
    ia = out["inference_aware"]
    assert ia["params"] == pytest.approx(out["params"], rel=1e-6)
    assert ia["tokens"] == pytest.approx(out["tokens"], rel=1e-6)
    assert out["total_flops_saving"] == pytest.approx(0, abs=1e-9)


def test_hours_budget_and_gpu_names():
    # 64 H100 for 30 days at MFU 0.4: C = 989e12 * 64 * 720 * 3600 * 0.4 = 6.56e22 FLOPs
    out = P.plan(gpu="H100", gpus=64, hours=720, price=2.5)
    assert out["flops"] == pytest.approx(989e12 * 64 * 720 * 3600 * 0.4, rel=1e-12)
    assert out["hours"] == pytest.approx(720, rel=1e-9) and out["gpu_hours"] == pytest.approx(64 * 720, rel=1e-9)
    assert out["cost_usd"] == pytest.approx(64 * 720 * 2.5, rel=1e-9)
    from trainlab.scaling.accelerators import ACCELERATORS, accelerator

    assert accelerator("RTX 4090") is ACCELERATORS["rtx-4090"]
    assert accelerator("tpu_v5e").flops == 197e12
    for a in ACCELERATORS.values():
        assert 1e13 < a.flops < 3e15 and a.precision and a.source


def test_law_from_file(tmp_path):
    fit = {"E": 2.0, "A": 300.0, "B": 900.0, "alpha": 0.3, "beta": 0.3, "se": {"E": 0.1}, "n_runs": 12}
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    law = P.load_law(str(tmp_path / "fit.json"))
    assert (law.E, law.A, law.B, law.alpha, law.beta) == (2.0, 300.0, 900.0, 0.3, 0.3)
    assert "fit.json" in law.source
    # alpha = beta and A < B: N* = (A / B)^(1/0.6) (C/6)^0.5 below sqrt(C/6)
    out = P.plan(6e20, law=str(tmp_path / "fit.json"))
    assert out["params"] == pytest.approx((300 / 900) ** (1 / 0.6) * 1e10, rel=1e-9)


@pytest.mark.parametrize("kwargs, says", [
    ({"flops": True}, "--flops must be a finite number > 0"),
    ({"flops": "1e21"}, "--flops must be a finite number > 0"),
    ({"flops": 0.0}, "got 0.0"),
    ({"flops": -1e21}, "got -1e+21"),
    ({"flops": math.inf}, "got inf"),
    ({"flops": math.nan}, "got nan"),
    ({"params": 7e9}, "--params alone is neither a budget nor a whole model"),
    ({"tokens": 7e9}, "--tokens alone is neither a budget nor a whole model"),
    ({"gpu": "h100", "gpus": 8}, "an accelerator gives the speed, not the budget"),
    ({}, "needs a budget or a model"),
    ({"flops": 1e21, "params": 1e9, "tokens": 1e10}, "give one compute budget"),
    ({"flops": 1e21, "gpu": "h100", "hours": 1}, "give one compute budget"),
    ({"flops": 1e21, "gpus": 8}, "need an accelerator"),
    ({"flops": 1e21, "gpu": "v100", "gpus": 2.5}, "whole number"),
    ({"flops": 1e21, "gpu": "v100", "mfu": 1.5}, "at most 1"),
    ({"flops": 1e21, "gpu": "a10g"}, "--gpu expects one of"),
    ({"flops": 1e21, "inference_tokens": -1}, "--inference-tokens must be a finite number >= 0"),
    ({"flops": 1e21, "law": "kaplan"}, "--law expects hoffmann or epoch"),
])
def test_bad_input_is_a_user_error(kwargs, says):
    with pytest.raises(UserError) as e:
        P.plan(**kwargs)
    assert says in e.value.message and e.value.hint and "\n" not in e.value.message


def test_unknown_gpu_with_peak_flops_is_fine():
    out = P.plan(1e21, gpu="a10g", peak_flops=70e12)
    assert out["gpu"]["name"] == "a10g" and out["gpu_hours"] == pytest.approx(1e21 / (70e12 * 0.4) / 3600)


# The command line, in this process through trainlab.cli.main


def plan_json(*args):
    r = run_cli("plan", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_gpt3():
    out = plan_json("--params", "175e9", "--tokens", "300e9", "--gpu", "v100", "--mfu", "0.224", "--price", "1.5")
    keys = {"params", "tokens", "flops", "loss", "tokens_per_param", "gpu_hours", "hours", "cost_usd", "law"}
    assert keys <= set(out)
    assert out["flops"] == pytest.approx(3.15e23) and out["gpu_hours"] == pytest.approx(3.125e6)
    assert out["cost_usd"] == pytest.approx(4.6875e6)
    assert out["law"]["source"] == EPOCH.source and out["law"]["alpha"] == EPOCH.alpha  # the default law


def test_cli_table_and_inference_aware():
    r = run_cli("plan", "--flops", "5.04e23", "--law", "hoffmann")
    assert r.returncode == 0, r.stderr
    assert "compute-optimal" in r.stdout and "30.3B" in r.stdout and "2.77T" in r.stdout and "Hoffmann" in r.stdout
    assert "GPU-hours" not in r.stdout  # no accelerator given
    r = run_cli("plan", "--gpu", "h100", "--gpus", "64", "--hours", "720", "--price", "2.5",
                "--inference-tokens", "2e12")
    assert r.returncode == 0, r.stderr
    assert "inference-aware" in r.stdout and "fewer total FLOPs" in r.stdout and "$115,200" in r.stdout
    out = plan_json("--gpu", "h100", "--gpus", "64", "--hours", "720", "--inference-tokens", "2e12")
    assert out["hours"] == pytest.approx(720) and out["inference_aware"]["params"] < out["params"]


def test_cli_law_file(tmp_path):
    (tmp_path / "fit.json").write_text(json.dumps({"E": 2.0, "A": 300.0, "B": 900.0, "alpha": 0.3, "beta": 0.3}))
    out = plan_json("--flops", "6e20", "--law", str(tmp_path / "fit.json"))
    assert out["law"]["E"] == 2.0 and out["params"] == pytest.approx((300 / 900) ** (1 / 0.6) * 1e10, rel=1e-9)


def one_error(r, *says):
    """Exit status 2, one `error:` line that says `says`, and a hint."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), r.stderr
    for s in says:
        assert s in r.stderr, r.stderr
    assert r.stdout == ""


def test_cli_unknown_gpu_names_the_known_ones():
    one_error(run_cli("plan", "--gpu", "a10g", "--flops", "1e21"), "'a10g'", "v100", "a100", "h100", "--peak-flops")


@pytest.mark.parametrize("value, says", [("0", "got 0.0"), ("-1e21", "got -1e+21"), ("inf", "got inf"),
                                         ("nan", "got nan"), ("lots", "expects a number; got 'lots'")])
def test_cli_bad_flops(value, says):
    one_error(run_cli("plan", f"--flops={value}"), "--flops", says)


def test_cli_bad_law_files(tmp_path):
    one_error(run_cli("plan", "--flops", "1e21", "--law", str(tmp_path / "missing.json")), "missing.json", "--law")
    (tmp_path / "broken.json").write_text("{\"E\": 1.7,")
    one_error(run_cli("plan", "--flops", "1e21", "--law", str(tmp_path / "broken.json")), "not readable JSON")
    (tmp_path / "partial.json").write_text(json.dumps({"E": 1.7, "A": 400, "B": 400, "alpha": 0.3}))
    one_error(run_cli("plan", "--flops", "1e21", "--law", str(tmp_path / "partial.json")),
              "partial.json", "beta is missing")


def test_cli_needs_a_budget_or_a_model():
    one_error(run_cli("plan"), "needs a budget or a model", "--flops C")
    one_error(run_cli("plan", "--params", "7e9"), "--params alone is neither a budget nor a whole model",
              "add --tokens D to cost that model")


def test_cuda_device_names_map_to_their_accelerator_for_mfu():
    from trainlab.scaling.accelerators import for_device

    names = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H100 PCIe": "h100-pcie", "NVIDIA L40S": "l40s",
             "NVIDIA L4": "l4", "NVIDIA A100-SXM4-80GB": "a100", "Tesla V100-SXM2-16GB": "v100",
             "NVIDIA GeForce RTX 4090": "rtx-4090", "NVIDIA H200": "h200"}
    for device, chip in names.items():
        assert for_device(device).name == chip
    assert for_device("NVIDIA A10G") is None and for_device("cpu") is None  # not an A10: no made-up peak
