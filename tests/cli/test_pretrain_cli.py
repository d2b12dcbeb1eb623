"""``seqanom pretrain``, ``train --init/--finetune`` and ``simulate --pretrained``."""

from __future__ import annotations

import json

import pytest

from seqanom_core.detector import SequenceDetector
from seqanom_core.ingest import write_events
from simulation.cli.main import main
from simulation.synth import SynthConfig, synthesize_events

TINY = ["--epochs", "1", "--max-len", "32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    paths = []
    for seed in (1, 2, 3):
        path = root / f"events-{seed}.parquet"
        write_events(synthesize_events(SynthConfig(n_shoppers=60, seed=seed)), path)
        paths.append(path)
    return root, paths


def test_pretrain_pools_files_and_train_fine_tunes_from_it(files, capsys):
    root, (a, b, site) = files
    pre = root / "pre"
    assert main(["-q", "pretrain", "--data", str(a), "--data", str(b), "--out", str(pre),
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert "on 120 shoppers" in out and "hashed category buckets do not" in out
    meta = json.loads((pre / "metadata.json").read_text())
    assert meta["pretraining"]["shoppers"] == 120 and meta["pretraining"]["size"] == "small"
    assert main(["-q", "train", "--data", str(site), "--init", str(pre), "--finetune", "head",
                 "--d-model", "32", "--out", str(root / "m"), *TINY]) == 0
    det = SequenceDetector.load(root / "m", progress=False)
    assert det.model_config.d_model == 64  # the pretrained model's, not --d-model's
    assert det.metadata_["pretrained"]["finetune"] == "head"


def test_pretrain_learns_from_the_built_in_generator(files, capsys):
    root, _ = files
    pre = root / "pre-synthetic"
    assert main(["-q", "pretrain", "--synthetic", "30", "--synthetic-seed", "7", "--size", "tiny",
                 "--out", str(pre), *TINY]) == 0
    assert "on 30 shoppers" in capsys.readouterr().out
    meta = json.loads((pre / "metadata.json").read_text())["pretraining"]
    assert meta["format"] == "synthetic" and meta["shoppers"] == 30
    assert meta["data"] == ["built-in generator (30 shoppers, seed 7)"]
    assert SequenceDetector.load(pre, progress=False).model_config.d_model == 32


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--finetune", "adapters"], "--finetune go with --init"),
    (["train", "--init", "{root}/none"], "--init {root}/none: no such model directory"),
    (["pretrain", "--data", "{a}", "--data", "{a}", "--quarantine", "{root}/q.csv"],
     "--quarantine goes with a single --data"),
    (["pretrain"], "give --data PATH (public logs) or --synthetic SHOPPERS"),
    (["pretrain", "--data", "{a}", "--synthetic", "50"], "one of the two"),
    (["pretrain", "--synthetic", "50", "--format", "taobao"], "--format and --mapping go with"),
    (["pretrain", "--synthetic", "5"], "--synthetic must be at least 10 shoppers"),
    (["simulate", "--pretrained", "none", "--finetune", "head"],
     "--finetune head goes with --pretrained"),
    (["simulate", "--pretrained", "{root}"], "not a model directory"),
])
def test_pretrained_options_are_checked(files, capsys, argv, message):
    root, (a, _, _) = files
    fill = {"root": root, "a": a}
    argv = [x.format(**fill) for x in argv]
    if argv[0] in ("train", "pretrain"):
        argv += ["--out", str(root / "out")] + (["--data", str(a)] if argv[0] == "train" else [])
    else:
        argv += ["--out", str(root / "sim"), "--prepare-only", "--shoppers", "24", "--sites", "2"]
    assert main(["-q", *argv]) == 2
    assert message.format(**fill) in capsys.readouterr().err


def test_simulate_prepares_a_run_config_from_the_pretrained_model(files, capsys):
    root, (a, _, _) = files
    pre = root / "pre-sim"
    assert main(["-q", "pretrain", "--data", str(a), "--out", str(pre), "--size", "small",
                 *TINY]) == 0
    out = root / "sim-pre"
    assert main(["-q", "simulate", "--prepare-only", "--pretrained", str(pre), "--finetune",
                 "adapters", "--adapter-rank", "4", "--shoppers", "24", "--sites", "2",
                 "--out", str(out)]) == 0
    text = (out / "run-config.toml").read_text()
    for line in (f'"pretrained" = "{pre.resolve()}"', '"finetune" = "adapters"',
                 '"adapter-rank" = 4', '"d-model" = 64', '"max-len" = 32', '"n-heads" = 4'):
        assert line in text
    assert '"pretrained-digest" = "' in text


def test_simulate_and_train_start_from_the_builtin_model_by_name(files, capsys):
    root, (_, _, site) = files
    out = root / "sim-builtin"
    assert main(["-q", "simulate", "--prepare-only", "--pretrained", "builtin", "--shoppers", "24",
                 "--sites", "2", "--out", str(out)]) == 0
    text = (out / "run-config.toml").read_text()
    # the name, not a temporary path: every site unpacks its own copy, the digest checks it
    for line in ('"pretrained" = "builtin"', '"d-model" = 32', '"max-len" = 64'):
        assert line in text
    assert '"pretrained-digest" = "' in text
    assert main(["-q", "train", "--data", str(site), "--init", "builtin", "--out",
                 str(root / "m-builtin"), "--epochs", "1"]) == 0
    det = SequenceDetector.load(root / "m-builtin", progress=False)
    assert det.model_config.d_model == 32 and det.metadata_["pretrained"]["finetune"] == "all"


@pytest.mark.parametrize(("argv", "pretrained", "said"), [
    ([], True, "start from the pretrained model builtin (--finetune all"),
    (["--model", "lstm"], False, "starting from scratch: the built-in pretrained model is not "
                                 "of this run's model 'lstm'"),
    (["--item-states", "funnel"], False, "item_states 'funnel'"),
    (["--no-dp"], False, "is the default with DP only"),
    (["--pretrained", "none"], False, ""),
    (["--pretrained", "builtin", "--no-dp"], True, ""),
])
def test_the_builtin_default_applies_only_to_dp_runs_of_its_model_settings(
        files, capsys, argv, pretrained, said):
    root, _ = files
    out = root / f"sim-default-{'-'.join(argv)}"
    assert main(["simulate", "--prepare-only", "--shoppers", "24", "--sites", "2", "--out",
                 str(out), *argv]) == 0
    assert said in capsys.readouterr().out
    assert ('"pretrained" = "builtin"' in (out / "run-config.toml").read_text()) == pretrained
