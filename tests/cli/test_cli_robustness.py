"""Malformed settings, model directories, ledgers, labels and output paths: each is one line on
stderr and exit status 2, never a traceback, and nothing is overwritten or silently reset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from simulation.cli import main

SMALL = ["--epochs", "1", "--d-model", "16", "--layers", "1", "--max-len", "32"]


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust")
    assert main(["-q", "synth", "--shoppers", "60", "--out", str(d / "ev.csv"), "--seed", "3"]) == 0
    assert main(["-q", "inject", "--data", str(d / "ev.csv"), "--out", str(d / "inj.csv"),
                 "--labels", str(d / "labels.csv"), "--rate", "0.3", "--seed", "1"]) == 0
    assert main(["-q", "train", "--data", str(d / "ev.csv"), "--out", str(d / "model"), *SMALL]) == 0
    (d / "header_only.csv").write_text("user_id,item_id,category_id,behavior,timestamp\n")
    return d


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("command", ["split", "inject"])
def test_no_valid_rows_is_an_error_for_every_command(wd, capsys, command):
    outs = (["--train-out", str(wd / "a.csv"), "--test-out", str(wd / "b.csv")] if command == "split"
            else ["--out", str(wd / "a.csv"), "--labels", str(wd / "b.csv")])
    code = main(["-q", command, "--data", str(wd / "header_only.csv"), *outs])
    _one_line_error(capsys, code, "header_only.csv", "no valid rows")


@pytest.mark.parametrize("extra, needle", [
    (["--dp", "--epsilon", "nan"], "epsilon"),
    (["--dp", "--epsilon", "inf"], "epsilon"),
    (["--dp", "--noise-multiplier", "-1"], "noise multiplier"),
    (["--epochs", "0"], "epochs"),
    (["--batch-size", "0"], "batch_size"),
    (["--lr", "-1"], "learning rate"),
    (["--lr", "nan"], "learning rate"),
    (["--d-model", "0"], "d_model"),
    (["--layers", "0"], "n_layers"),
    (["--category-buckets", "0"], "category_buckets"),
    (["--session-gap", "-1"], "session gap"),
    (["--device", "bogus"], "bogus"),
    (["--dp-seed", "3"], "--dp-seed need --dp"),
])
def test_bad_training_settings_are_refused_before_anything_is_written(wd, capsys, extra, needle):
    out = wd / "never"
    code = main(["-q", "train", "--data", str(wd / "ev.csv"), "--out", str(out), *SMALL, *extra])
    _one_line_error(capsys, code, needle)
    assert not out.exists()


def test_negative_seed_is_a_usage_error(wd, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-q", "split", "--data", str(wd / "ev.csv"), "--train-out", str(wd / "a.csv"),
              "--test-out", str(wd / "b.csv"), "--seed", "-1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "must be 0 or more" in err
    assert len(err.strip().splitlines()) == 1 and "seqanom split: error: argument --seed" in err


def test_train_out_that_is_a_file_is_refused(wd, capsys):
    code = main(["-q", "train", "--data", str(wd / "ev.csv"), "--out", str(wd / "ev.csv"), *SMALL])
    _one_line_error(capsys, code, "is a file")


@pytest.mark.parametrize("content", ["{}", "[]", '{"accountant": "rdp", "history": [[1, 2, 3]]}'])
def test_damaged_ledger_is_refused_not_reset(wd, capsys, content):
    ledger = wd / "ledger_bad.json"
    ledger.write_text(content)
    code = main(["-q", "train", "--data", str(wd / "ev.csv"), "--out", str(wd / "never"),
                 "--dp", "--epsilon", "8", "--ledger", str(ledger), "--site", "s", *SMALL])
    _one_line_error(capsys, code, "ledger_bad.json")
    code = main(["ledger", str(ledger)])
    _one_line_error(capsys, code, "ledger_bad.json")


def _damage(model_dir, name, how):
    path = model_dir / name
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif how == "nan":
        arrays = load_file(str(path))
        key = sorted(arrays)[0]
        arrays[key] = np.full_like(arrays[key], np.nan)
        save_file(arrays, str(path))
    elif how == "no-tokenizer":
        cfg = json.loads(path.read_text())
        del cfg["tokenizer"]
        path.write_text(json.dumps(cfg))
    elif how == "short-center":
        cal = json.loads(path.read_text())
        cal["center"] = cal["center"][:3]
        path.write_text(json.dumps(cal))
    elif how == "bad-threshold":
        cal = json.loads(path.read_text())
        cal["threshold"] = "x"
        path.write_text(json.dumps(cal))
    else:
        path.write_text(how)


@pytest.mark.parametrize("name, how", [
    ("model.safetensors", "truncate"), ("model.safetensors", "nan"), ("config.json", "[]"),
    ("config.json", "no-tokenizer"), ("calibration.json", "short-center"),
    ("calibration.json", "bad-threshold"), ("calibration.json", "null"), ("metadata.json", "[1, 2]"),
])
def test_damaged_model_directory_is_one_line_error(wd, capsys, tmp_path, name, how):
    model = tmp_path / "model"
    shutil.copytree(wd / "model", model)
    _damage(model, name, how)
    code = main(["-q", "score", "--model", str(model), "--data", str(wd / "inj.csv"),
                 "--out", str(tmp_path / "s.csv")])
    _one_line_error(capsys, code, name)
    assert not (tmp_path / "s.csv").exists()


def test_weights_of_another_model_size_are_one_line(wd, capsys, tmp_path):
    other = tmp_path / "other"
    assert main(["-q", "train", "--data", str(wd / "ev.csv"), "--out", str(other), "--epochs", "1",
                 "--d-model", "8", "--layers", "1", "--max-len", "32"]) == 0
    capsys.readouterr()
    model = tmp_path / "model"
    shutil.copytree(wd / "model", model)
    shutil.copy(other / "model.safetensors", model / "model.safetensors")
    code = main(["-q", "score", "--model", str(model), "--data", str(wd / "inj.csv"),
                 "--out", str(tmp_path / "s.csv")])
    _one_line_error(capsys, code, "model.safetensors")


def test_bad_labels_and_output_paths(wd, capsys, tmp_path):
    base = ["-q", "score", "--model", str(wd / "model"), "--data", str(wd / "inj.csv")]
    code = main([*base, "--out", str(tmp_path)])
    _one_line_error(capsys, code, "is a directory")
    labels = (wd / "labels.csv").read_text().splitlines()
    user, _, kind = labels[1].split(",", 2)
    bad = tmp_path / "labels_bad.csv"
    bad.write_text("\n".join([labels[0], f"{user},yes,{kind}", *labels[2:]]) + "\n")
    code = main([*base, "--out", str(tmp_path / "s.csv"), "--labels", str(bad)])
    _one_line_error(capsys, code, "labels_bad.csv", "line 2", "0 or 1")
    normal = tmp_path / "labels_normal.csv"
    normal.write_text("\n".join([labels[0]] + [",".join([ln.split(",")[0], "0", ""])
                                               for ln in labels[1:]]) + "\n")
    assert main([*base, "--out", str(tmp_path / "s.csv"), "--labels", str(normal)]) == 0
    assert "undefined" in capsys.readouterr().out


def test_colliding_outputs_are_refused(wd, capsys):
    same = str(wd / "same.csv")
    code = main(["-q", "split", "--data", str(wd / "ev.csv"), "--train-out", same, "--test-out", same])
    _one_line_error(capsys, code, "--train-out", "--test-out")
    code = main(["-q", "inject", "--data", str(wd / "ev.csv"), "--out", same, "--labels", same])
    _one_line_error(capsys, code, "--out", "--labels")
    assert not (wd / "same.csv").exists()


@pytest.mark.integration
def test_console_command_error_exit_status(wd, tmp_path):
    # the installed entry point leaves at once on an error (no teardown abort: status 2, not 134)
    code = ("import sys; from simulation.cli import console_main; sys.argv = ['seqanom'] + "
            f"{['-q', 'score', '--model', str(wd / 'model'), '--data', str(wd / 'header_only.csv'), '--out', str(tmp_path / 's.csv')]!r}; console_main()")
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "no valid rows" in proc.stderr and "terminate called" not in proc.stderr


def test_score_options_and_written_scores_agree_with_flags(wd, capsys, tmp_path):
    base = ["-q", "score", "--model", str(wd / "model"), "--data", str(wd / "ev.csv")]
    _one_line_error(capsys, main([*base, "--out", str(tmp_path / "s.csv"), "--top-k", "0"]),
                    "--top-k")
    _one_line_error(capsys, main([*base, "--out", str(tmp_path / "s.csv"), "--metrics-out",
                                  str(tmp_path / "m.json")]), "--metrics-out needs --labels")
    # scoring the training shoppers puts calibration shoppers exactly at the threshold: the
    # written score must say the same as the flag (a 4-decimal rounding once did not)
    assert main([*base, "--out", str(tmp_path / "s.csv")]) == 0
    threshold = json.loads((wd / "model" / "calibration.json").read_text())["threshold"]
    rows = (tmp_path / "s.csv").read_text().splitlines()[1:]
    for row in rows:
        _, score, flagged = row.split(",")[:3]
        assert (float(score) > threshold) == (flagged == "1"), row


def test_epsilon_without_dp_is_refused_by_simulate(tmp_path, capsys):
    code = main(["-q", "simulate", "--no-dp", "--epsilon", "3", "--prepare-only",
                 "--out", str(tmp_path / "run")])
    _one_line_error(capsys, code, "--no-dp")
    assert not (tmp_path / "run").exists()


def _status(argv: list[str]) -> int:
    """``main(argv)``'s exit status, an argparse error's included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.mark.parametrize("extra, needles", [
    # found by tests/fuzz/test_fuzz_options.py: each was exit 3 or an error naming neither the
    # option nor its file
    (["train", "--seed", "9" * 30], ["--seed", "at most"]),  # torch's seed overflowed
    (["credentials", "--sites", "a", "--days", "9" * 30], ["--days"]),  # the dates overflowed
    (["credentials", "--sites", ""], ["--sites"]),
    (["credentials", "--sites", "a", "--host=--"], ["--host", "expected a value"]),  # [] stored
    (["train", "--alert-rate", "nan"], ["alert_rate"]),
    (["train", "--calibration-fraction", "-0.0"], ["calibration_fraction"]),
    (["train", "--lr", "nan"], ["lr (the learning rate)"]),
    (["train", "--session-gap", "nan"], ["session_gap"]),
    (["train", "--format", "="], ["--format ="]),
    (["audit", "--canary-length", "0"], ["canary_length"]),
    (["ledger", "out", "--raise-budget", "-0.0"], ["--raise-budget"]),
    (["stream", "--max-shoppers", "-1"], ["max_shoppers"]),
    (["stream", "--idle-ttl", "nan"], ["idle_ttl"]),
    (["superlink", "--credentials", " ", "--dry-run"], ["--credentials", "no such directory"]),
    # bytes the console could not decode: no name or path with them could be printed
    (["inject", "--quarantine", "caf\udce9"], ["--quarantine caf\\udce9", "not valid UTF-8"]),
    (["inject", "--data", " "], ["--data", "no such file"]),  # named only the blank path
    (["ledger", ""], ["'': an empty path"]),  # was ": is a directory" (Path("") is ".")
    (["inject", "--labels", ""], ["--labels '': an empty path"]),
    (["simulate", "--local-epochs", "-1"], ["--local-epochs"]),  # named only "epochs"
    (["train", "--lr", "1e30"], ["training diverged", "lr"]),  # no threshold on no scores
    # a line break in a value no longer splits the error in two
    (["train", "--data", "x\ny"], ["x\\ny"]),
])
def test_option_values_found_by_the_fuzz_are_one_line_errors(wd, capsys, tmp_path, monkeypatch,
                                                             extra, needles):
    monkeypatch.chdir(tmp_path)  # relative paths: in tmp_path
    required = {
        "train": ["--data", str(wd / "ev.csv"), "--out", str(tmp_path / "out"), *SMALL],
        "audit": ["--data", str(wd / "ev.csv"), "--out", str(tmp_path / "out"), *SMALL],
        "credentials": ["--out", str(tmp_path / "out")],
        "ledger": [],
        "stream": ["--model", str(wd / "model")],
        "superlink": [],
        "simulate": ["--prepare-only", "--out", str(tmp_path / "out")],
        "inject": ["--data", str(wd / "ev.csv"), "--out", str(tmp_path / "out"), "--labels",
                   str(tmp_path / "labels.csv")],
    }
    code = _status(["-q", extra[0], *required[extra[0]], *extra[1:]])
    _one_line_error(capsys, code, *needles)
    assert not (tmp_path / "out").exists()


def test_serve_refuses_an_address_it_cannot_listen_on_before_loading(wd, capsys):
    # found by reasoning about the fuzz's uvicorn stub: uvicorn exited 1 after "serving ..."
    import socket

    base = ["-q", "serve", "--model", str(wd / "model")]
    _one_line_error(capsys, main([*base, "--host", "a b"]), "--host a b", "not an address")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        _one_line_error(capsys, main([*base, "--port", port]), f"--port {port}",
                        "cannot listen")
