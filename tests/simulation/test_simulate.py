"""A real federated simulation (Flower simulation engine on Ray) through the CLI, in a subprocess."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from process_tree import run_in_group

from seqanom_core.detector import SequenceDetector


def _simulate(cmd: list[str]) -> str:
    """Run ``seqanom simulate`` in its own session (stopped by pid on failure); its output."""
    return run_in_group(cmd, timeout=400, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.integration
def test_simulate_cli_runs_a_federation_and_writes_the_report(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "simulation.cli", "-q", "simulate", "--shoppers", "240",
           "--sites", "2", "--rounds", "2", "--local-epochs", "1", "--no-baselines",
           "--out", str(out)]
    output = _simulate(cmd)
    metrics = json.loads((out / "metrics.json").read_text())
    fed = metrics["evaluation"]["federated"]
    assert 0.5 < fed["auroc"] <= 1.0
    assert metrics["privacy"]["dp"] and metrics["privacy"]["epsilon"] <= 8.0
    assert "seeded from the OS" in metrics["privacy"]["randomness"]  # no --dp-seed: secret noise
    assert (out / "report.md").is_file() and any((out / "figures").glob("*.png"))
    assert "seeded from the OS" in (out / "report.md").read_text()
    rounds = (out / "checkpoints" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["round"] for r in rounds] == [1, 2]
    SequenceDetector.load(out / "model", progress=False)
    SequenceDetector.load(out / "checkpoints" / "round-0002", progress=False)  # calibrated
    assert sorted(p.name for p in (out / "ledgers").glob("*.json")) == ["site-0.json", "site-1.json"]
    report = (out / "report.md").read_text()
    assert "Everything the sites sent" in report and "calibration-statistics" in report
    kinds = metrics["privacy"]["epsilon_by_kind"]
    assert set(kinds) == {"model-update", "training-count", "calibration-statistics",
                          "calibration-scores"}
    assert max(kinds.values()) < metrics["privacy"]["epsilon"] <= 8.0
    assert "AUROC" in output and Path(out / "model").is_dir()


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["local+central", "local+secagg"])
def test_simulate_each_privacy_mode_reports_its_guarantees(tmp_path, mode):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "simulation.cli", "-q", "simulate", "--shoppers", "150",
           "--sites", "3", "--rounds", "1", "--local-epochs", "1", "--no-baselines",
           "--privacy-mode", mode, "--central-noise", "1.0", "--central-epsilon", "10",
           "--out", str(out)]
    output = _simulate(cmd)
    privacy = json.loads((out / "metrics.json").read_text())["privacy"]
    assert privacy["mode"] == mode and privacy["rounds"] == 1
    levels = {g["level"]: g for g in privacy["guarantees"]}
    assert 0 < levels["shopper"]["epsilon"] <= 8.0 and "Opacus" in levels["shopper"]["accounted_by"]
    if mode == "local+central":
        assert levels["site"]["releases"] == 1 and "Flower" in levels["site"]["accounted_by"]
        assert privacy["server_saw_individual_updates"] is True
        assert "for one site" in output
    else:
        assert set(levels) == {"shopper"} and privacy["server_saw_individual_updates"] is False
        assert "only the sum" in output
    ckpt = json.loads((out / "checkpoints" / "round-0001" / "round.json").read_text())
    assert ckpt["privacy"]["mode"] == mode
    assert sorted(p.name for p in (out / "ledgers").glob("*.json")) == [f"site-{k}.json" for k in range(3)]
    assert "Guarantees that held in this run" in (out / "report.md").read_text()


def test_a_new_simulation_replaces_an_earlier_one_in_the_same_run_dir(tmp_path):
    # the earlier run's ledger (budget spent) must not carry over to the new simulated sites
    from simulation.run import SimulationConfig, prepare_flwr_run

    out = tmp_path / "run"
    (out / "ledgers").mkdir(parents=True)
    (out / "ledgers" / "site-0.json").write_text('{"epsilon_spent": 8.0}')
    (out / "checkpoints" / "round-0003").mkdir(parents=True)
    (out / "notes.txt").write_text("not ours")
    (out / "simulation.json").write_text("{}")  # what marks a simulation's run directory
    cfg = SimulationConfig(out=out, shoppers=120, sites=2, baselines=False)
    prepare_flwr_run(cfg)
    assert not (out / "ledgers").exists() and not (out / "checkpoints").exists()
    assert (out / "notes.txt").read_text() == "not ours"
    assert sorted(p.name for p in (out / "sites").iterdir()) == ["site-0", "site-1"]
    assert (out / "run-config.toml").is_file()


def test_an_earlier_run_is_not_cleared_over_an_input_inside_it(tmp_path):
    # the run's own input under RUN_DIR/sites: refused before anything is removed
    from seqanom_core.errors import ConfigError
    from simulation.run import clear_previous_run

    out = tmp_path / "run"
    data = out / "sites" / "ev.csv"
    data.parent.mkdir(parents=True)
    data.write_text("stands for the input")
    (out / "ledgers").mkdir()
    (out / "simulation.json").write_text("{}")
    with pytest.raises(ConfigError, match="ev.csv lies inside .*sites"):
        clear_previous_run(out, keep=(data, None))
    assert data.is_file() and (out / "ledgers").is_dir()
    assert clear_previous_run(out, keep=(tmp_path / "elsewhere.csv",)) == [
        "sites", "ledgers", "simulation.json"]


def test_a_run_dir_without_a_simulations_mark_is_never_cleared(tmp_path):
    # report.md and figures/ that no simulation wrote (no simulation.json): refused, kept
    from seqanom_core.errors import ConfigError
    from simulation.run import clear_previous_run

    out = tmp_path / "mine"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "plot.png").write_bytes(b"mine")
    (out / "report.md").write_text("my report")
    with pytest.raises(ConfigError, match="holds figures, report.md, which no seqanom"):
        clear_previous_run(out)
    assert (out / "report.md").read_text() == "my report"
    assert (out / "figures" / "plot.png").read_bytes() == b"mine"
    # a run from before simulation.json: its Flower app config marks it
    old = tmp_path / "old"
    (old / "flwr-app").mkdir(parents=True)
    (old / "flwr-app" / "pyproject.toml").write_text('[project]\nname = "seqanom-simulation"\n')
    (old / "report.md").write_text("an earlier simulation's")
    assert clear_previous_run(old) == ["report.md", "flwr-app"]


def test_simulate_reads_a_generic_mapping_and_quarantines_bad_rows(tmp_path, capsys):
    import pandas as pd

    from simulation.cli import main

    src = tmp_path / "ev.csv"
    assert main(["-q", "synth", "--shoppers", "80", "--out", str(src), "--seed", "4"]) == 0
    df = pd.read_csv(src, dtype=str).rename(columns={
        "user_id": "shopper", "item_id": "product", "category_id": "cat", "behavior": "action",
        "timestamp": "ts"})
    df.loc[2, "ts"] = "yesterday"
    df.loc[7, "action"] = "teleport"
    dirty = tmp_path / "site_log.csv"
    df.to_csv(dirty, index=False)
    mapping = ("user_id=shopper,item_id=product,category_id=cat,behavior=action,timestamp=ts,"
               "behaviors=view:view;cart:cart;fav:fav;buy:buy,time=unix_s")
    q = tmp_path / "rejected.csv"
    out = tmp_path / "run"
    assert main(["-q", "simulate", "--prepare-only", "--data", str(dirty), "--format", "generic",
                 "--mapping", mapping, "--quarantine", str(q), "--sites", "2", "--out", str(out)]) == 0
    rejected = pd.read_csv(q)
    assert len(rejected) == 2
    assert (out / "run-config.toml").is_file() and len(list((out / "sites").iterdir())) == 2
    # --mapping without generic, and input options without --data, are refused in one line
    assert main(["-q", "simulate", "--prepare-only", "--mapping", mapping, "--out", str(out)]) == 2
    assert "only used with --data" in capsys.readouterr().err


def test_bad_settings_are_refused_before_an_earlier_run_is_replaced(tmp_path, capsys):
    from simulation.cli import main

    out = tmp_path / "run"
    ledger = out / "ledgers" / "site-0.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text("{}")  # stands for an earlier run's spent ledger
    for bad in (["--epsilon", "nan"], ["--local-epochs", "0"], ["--partition", "dirichlet",
                "--alpha", "0"], ["--privacy-mode", "local+central", "--central-clip", "nan"]):
        code = main(["-q", "simulate", "--prepare-only", "--shoppers", "60", "--out", str(out),
                     *bad])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (bad, err)
        assert ledger.is_file(), bad  # nothing of the earlier run was removed
    # natural partition of a file with fewer site values than --sites
    data = tmp_path / "ev.csv"
    assert main(["-q", "synth", "--shoppers", "60", "--sites", "2", "--out", str(data)]) == 0
    code = main(["-q", "simulate", "--prepare-only", "--data", str(data), "--format", "seqanom",
                 "--partition", "natural", "--sites", "3", "--out", str(out)])
    assert code == 2 and "only 2 value(s)" in capsys.readouterr().err and ledger.is_file()
    # an output that names the input
    code = main(["-q", "simulate", "--prepare-only", "--data", str(data), "--format", "seqanom",
                 "--quarantine", str(data), "--out", str(out)])
    assert code == 2 and "--data and --quarantine" in capsys.readouterr().err
    assert data.stat().st_size > 1000


def test_no_history_copy_reaches_the_sites_run_config_and_the_baselines(tmp_path):
    import tomllib

    from seqanom_core.federation.run_config import settings_from_run_config
    from simulation.cli import main
    from simulation.run import SimulationConfig, centralised_configs

    out = tmp_path / "run"
    assert main(["-q", "simulate", "--prepare-only", "--shoppers", "60", "--no-history-copy",
                 "--out", str(out)]) == 0
    written = tomllib.loads((out / "run-config.toml").read_text())
    assert settings_from_run_config(written).model.history_copy is False
    assert centralised_configs(SimulationConfig(history_copy=False))[0].history_copy is False
    assert centralised_configs(SimulationConfig())[0].history_copy is True


def test_dp_seed_reaches_the_sites_and_the_baselines_only_when_given(capsys):
    from seqanom_core.federation.run_config import settings_from_run_config
    from simulation.cli import main
    from simulation.run import SimulationConfig, centralised_configs, run_config

    secret = SimulationConfig(out=Path("unused"))
    assert run_config(secret)["dp-seed"] == -1
    assert settings_from_run_config(run_config(secret)).train.dp.seed is None
    assert centralised_configs(secret)[2].dp.seed is None
    seeded = SimulationConfig(out=Path("unused"), dp_seed=11)
    assert settings_from_run_config(run_config(seeded)).train.dp.seed == 11
    assert centralised_configs(seeded)[2].dp.seed == 11
    assert main(["simulate", "--no-dp", "--dp-seed", "3", "--out", "unused"]) == 2
    assert "--dp-seed seeds DP training" in capsys.readouterr().err


def test_accountant_reaches_the_sites_and_the_baselines(tmp_path, capsys):
    import tomllib

    from seqanom_core.federation.run_config import settings_from_run_config
    from simulation.cli import main
    from simulation.run import SimulationConfig, centralised_configs, run_config

    assert settings_from_run_config(run_config(SimulationConfig())).train.dp.accountant == "rdp"
    prv = SimulationConfig(out=Path("unused"), accountant="prv")
    assert settings_from_run_config(run_config(prv)).train.dp.accountant == "prv"
    assert centralised_configs(prv)[2].dp.accountant == "prv"
    out = tmp_path / "run"
    assert main(["-q", "simulate", "--prepare-only", "--shoppers", "60", "--accountant", "prv",
                 "--out", str(out)]) == 0
    written = tomllib.loads((out / "run-config.toml").read_text())
    assert settings_from_run_config(written).train.dp.accountant == "prv"
    assert main(["simulate", "--no-dp", "--accountant", "prv", "--out", "unused"]) == 2
    assert "--accountant accounts DP training" in capsys.readouterr().err


def test_site_audit_trains_site_zero_alone_with_the_runs_dp_setting(small_split):
    from simulation.run import SimulationConfig, site_audit

    cfg = SimulationConfig(out=Path("unused"), rounds=1, local_epochs=1, d_model=16, n_layers=1,
                           max_len=16, epsilon=4.0, dp_seed=2, audit=True, audit_canaries=12)
    import pyarrow as pa
    import pyarrow.compute as pc

    events = small_split[0]
    first = pc.unique(events.column("user_id"))[:80]
    record = site_audit(cfg, events.filter(pc.is_in(events.column("user_id"),
                                                    value_set=pa.array(first))))
    assert record["site"] == "site-0" and record["dp"] is True
    assert 0 < record["epsilon_accounted"] <= 4.0 + 1e-9 and record["epochs"] == 1
    assert record["canaries"]["canaries"] == 12 and record["canaries"]["canary_length"] == 15
    assert 0.0 <= record["mia_auc"] <= 1.0 and record["epsilon_lower_bound"] >= 0.0


def test_simulate_audit_option_reaches_the_config_and_the_console(monkeypatch, capsys, tmp_path):
    import simulation.run as run
    from simulation.cli import main

    seen = {}

    def fake_simulate(cfg, loaded=None, placement=None):
        seen["cfg"] = cfg
        return {"seconds": 1.0, "evaluation": {}, "privacy": {}, "audit": {
            "site": "site-0", "mia_auc": 0.5123, "epsilon_lower_bound": 0.0,
            "epsilon_accounted": 7.99, "canaries": {"canaries": 32}}}

    monkeypatch.setattr(run, "simulate", fake_simulate)
    assert main(["-q", "simulate", "--audit", "--audit-canaries", "32", "--out",
                 str(tmp_path / "r")]) == 0
    assert seen["cfg"].audit is True and seen["cfg"].audit_canaries == 32
    out = capsys.readouterr().out
    assert ("privacy audit (site-0 alone, 32 canaries): MIA AUC 0.512, epsilon lower bound "
            "0.000 (accounted 7.990)") in out
    assert run.SimulationConfig().audit is False  # off unless asked for
