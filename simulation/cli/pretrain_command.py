"""``seqanom pretrain`` (the central team's next-event model on public or synthetic data, no DP),
and the options of ``train`` that start from a pretrained model (``--init``, ``--finetune``)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from seqanom_core.config import (
    FINETUNE_MODES,
    ITEM_STATES,
    MODEL_SIZES,
    SESSION_GAP_S,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
)
from seqanom_core.errors import ConfigError
from simulation.cli.inputs import (
    add_input_args,
    add_model_kind_arg,
    check_paths,
    load_input,
    seed_int,
)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain the next-event model on public or synthetic event logs (no DP: the central
    team's own data) and write a model directory that ``train --init``, ``simulate --pretrained``
    and the run config's ``pretrained`` start from. Several --data files (one --format) are
    pooled; their shoppers are kept apart. ``--synthetic N`` learns from N shoppers of the
    built-in generator instead."""
    from seqanom_core.detector import make_detector
    from seqanom_core.pretraining import TRANSFERS, concat_sequences

    if (args.data is None) == (args.synthetic is None):
        raise ConfigError("give --data PATH (public logs) or --synthetic SHOPPERS (the built-in "
                          "generator), one of the two")
    if args.synthetic is not None and (args.format, args.mapping) != ("seqanom", None):
        raise ConfigError("--format and --mapping go with --data, not with --synthetic")
    if args.synthetic is not None and args.synthetic < 10:
        raise ConfigError(f"--synthetic must be at least 10 shoppers, not {args.synthetic}")
    data = args.data or []
    if args.quarantine and len(data) != 1:
        raise ConfigError("--quarantine goes with a single --data file (it names one CSV)")
    check_paths({f"data {k + 1}": p for k, p in enumerate(data)},
                {"out": args.out, "quarantine": args.quarantine}, dirs=["out"],
                replaced={"out": [args.out]})
    d_model, layers, heads = MODEL_SIZES[args.size]
    tok = TokenizerConfig(category_buckets=args.category_buckets, session_gap_s=args.session_gap,
                          item_states=args.item_states)
    model = ModelConfig(kind=args.model, d_model=d_model, n_layers=layers, n_heads=heads,
                        max_len=args.max_len)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, device=args.device)
    sets = []
    for path in data:
        seqs, _, report = load_input(argparse.Namespace(**{**vars(args), "data": path}), tok)
        print(report.summary())
        sets.append(seqs)
    if args.synthetic is not None:
        sets.append(_synthetic_sequences(args.synthetic, args.synthetic_seed, tok))
        data = [f"built-in generator ({args.synthetic} shoppers, seed {args.synthetic_seed})"]
    pooled = concat_sequences(sets, [f"{k}:" for k in range(len(sets))] if len(sets) > 1 else None)
    det = make_detector(args.model, model_config=model, tokenizer_config=tok, train_config=train,
                        progress=not args.quiet)
    t0 = time.time()
    det.fit(pooled)
    det.metadata_["pretraining"] = {"data": [str(p) for p in data],
                                    "format": "synthetic" if args.synthetic else args.format,
                                    "size": args.size, "shoppers": len(pooled),
                                    "events": pooled.n_events, "transfers": TRANSFERS}
    out = det.save(args.out)
    n = sum(p.numel() for p in det.network_.parameters())
    print(f"pretrained a {args.size} {args.model} ({n:,} parameters) on {len(pooled):,} shoppers "
          f"({pooled.n_events:,} events) of {', '.join(map(str, data))} in {time.time() - t0:.1f} s "
          f"on {det.device_}; final loss {det.metadata_['epoch_losses'][-1]:.3f}")
    print(f"what transfers to other data: {TRANSFERS}")
    print(f"model written to {out} (seqanom train --init {out}, simulate --pretrained {out})")
    return 0


def _synthetic_sequences(shoppers: int, seed: int, tok: TokenizerConfig) -> Any:
    """``shoppers`` shoppers of the built-in generator (``seqanom synth``), tokenised."""
    from seqanom_core.sequences import build_sequences
    from simulation.synth import SynthConfig, synthesize_events

    events = synthesize_events(SynthConfig(n_shoppers=shoppers, seed=seed))
    print(f"built-in generator: {shoppers:,} shoppers, {events.num_rows:,} events (seed {seed})")
    return build_sequences(events, tok)


def _add_finetune_args(p: argparse.ArgumentParser, start: str, what: str) -> None:
    """--finetune and --adapter-rank, which go with ``start`` (--init or --pretrained)."""
    p.add_argument("--finetune", choices=FINETUNE_MODES, default=TrainConfig.finetune,
                   help=f"with {start}: what to {what}: every parameter (all), low-rank adapters "
                   "+ heads + event-token embedding (adapters: DP noise on few parameters), or "
                   "heads + event-token embedding (head); default all")
    p.add_argument("--adapter-rank", type=int, default=TrainConfig.adapter_rank, metavar="R",
                   help="with --finetune adapters: the adapters' rank (default 8)")


def add_init_args(p: argparse.ArgumentParser) -> None:
    """``train``'s --init / --finetune / --adapter-rank / --keep-categories."""
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="start from this pretrained model directory (seqanom pretrain); its model "
                   "and tokenizer settings replace --model, --d-model, --layers, --max-len, "
                   "--category-buckets, --session-gap and --item-states")
    _add_finetune_args(p, "--init", "train")
    p.add_argument("--keep-categories", action="store_true",
                   help="with --init: keep the pretrained rows of the hashed category buckets "
                   "(only when pretrained on the same catalogue; default: pooled per behaviour)")


def init_configs(args: argparse.Namespace, tok: TokenizerConfig, model: ModelConfig,
                 train: TrainConfig) -> tuple[Any, TokenizerConfig, ModelConfig, TrainConfig]:
    """(the pretrained detector or None, tokenizer, model, training) for ``train``: with
    --init, the model and tokenizer settings are the pretrained model's."""
    train = dataclasses.replace(train, finetune=args.finetune, adapter_rank=args.adapter_rank)
    if not args.init:
        given = [flag for flag, on in (("--finetune", args.finetune != "all"),
                                       ("--keep-categories", args.keep_categories)) if on]
        if given:
            raise ConfigError(f"{' and '.join(given)} go with --init MODEL_DIR (a pretrained model)")
        return None, tok, model, train
    from seqanom_core.builtin_model import resolve
    from seqanom_core.pretraining import load_pretrained

    if not resolve(args.init).is_dir():
        raise ConfigError(f"--init {args.init}: no such model directory")
    init = load_pretrained(args.init)
    model = dataclasses.replace(init.model_config, dropout=model.dropout)
    return init, init.tokenizer_config, model, train


def add_pretrain_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``pretrain``."""
    p = add("pretrain", cmd_pretrain, "pretrain the next-event model on public or synthetic "
            "logs (no DP) for train --init / simulate --pretrained")
    add_input_args(p, required=False, tokens=True, several=True)
    p.add_argument("--synthetic", type=int, metavar="SHOPPERS",
                   help="instead of --data: this many shoppers of the built-in generator "
                   "(seqanom synth), e.g. 2500")
    p.add_argument("--synthetic-seed", type=seed_int, default=101, metavar="SEED",
                   help="with --synthetic: the generator's seed (default 101)")
    add_model_kind_arg(p)
    p.add_argument("--size", choices=sorted(MODEL_SIZES), default="small",
                   help="tiny: d_model 32, 2 layers, 4 heads (simulate's model; with --max-len "
                   "64); small: d_model 64, 2 layers, 4 heads (train's default); base: d_model "
                   "128, 4 layers, 8 heads (for a GPU); default small")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    p.add_argument("--max-len", type=int, default=128, help="window length seen by the model")
    p.add_argument("--category-buckets", type=int, default=64)
    p.add_argument("--session-gap", type=float, default=SESSION_GAP_S, metavar="SECONDS")
    p.add_argument("--item-states", choices=ITEM_STATES, default=TokenizerConfig.item_states)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def add_pretrained_args(p: argparse.ArgumentParser) -> None:
    """``simulate``'s --pretrained / --finetune / --adapter-rank."""
    p.add_argument("--pretrained", metavar="MODEL_DIR",
                   help="where the sites and the centralised baselines start: a pretrained "
                   "model directory (seqanom pretrain), whose model settings replace --model, "
                   "--no-history-copy and --item-states; 'builtin', the model that ships with "
                   "seqanom (pretrained on the built-in generator's shoppers); 'none', from "
                   "scratch. Default: builtin for runs with DP whose --model, --no-history-copy "
                   "and --item-states are its own (Transformer, history copy, basic), else none")
    _add_finetune_args(p, "--pretrained", "train and send")


#: ``simulate --pretrained`` when not given: the built-in model, for runs with DP of its model
#: settings (``with_pretrained``). Measured on Taobao (bench/README.md, ``pretrain_bench`` and
#: ``loko_bench``): +0.036 federated DP AUROC (4 sites, 3 seeds), +0.017 single-site DP, but
#: -0.010 without DP, so runs without DP start from scratch.
PRETRAINED_DEFAULT = "builtin"


def with_pretrained(cfg: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """The simulation settings ``cfg`` with --pretrained's model settings and --finetune, and
    the line that says where the run starts (printed after the ingest summary). When
    --pretrained is not given and the default is the built-in model, a run without DP, or whose
    model settings (--model, --no-history-copy, --item-states) are not the built-in model's,
    starts from scratch and says why."""
    from seqanom_core.builtin_model import BUILTIN, resolve
    from simulation.pretrained import simulation_fields

    choice, said = args.pretrained or PRETRAINED_DEFAULT, ""
    if args.pretrained is None and choice == BUILTIN:
        fields = simulation_fields(resolve(BUILTIN))
        differ = [f"{name} {getattr(cfg, name)!r}" for name, value in fields.items()
                  if getattr(cfg, name) != value]
        if differ or not cfg.dp:
            why = (f"is not of this run's {', '.join(differ)}" if differ else
                   "is the default with DP only (without DP it measured 0.01 AUROC below)")
            said = (f"starting from scratch: the built-in pretrained model {why} "
                    f"(--pretrained none|builtin|MODEL_DIR)")
            choice = "none"
    if choice in ("", "none"):
        if args.finetune != "all":
            raise ConfigError(f"--finetune {args.finetune} goes with --pretrained MODEL_DIR")
        return dataclasses.replace(cfg, pretrained=""), said
    path = resolve(choice)
    if not path.is_dir():
        raise ConfigError(f"--pretrained {choice}: no such model directory")
    if args.adapter_rank < 1:
        raise ConfigError(f"--adapter-rank must be 1 or more, not {args.adapter_rank}")
    # builtin stays a name: every site reads its own copy (the digest checks it is the same)
    name = BUILTIN if choice == BUILTIN else str(path.resolve())
    said = (f"the sites and the baselines start from the pretrained model {name} (--finetune "
            f"{args.finetune}; --pretrained none: from scratch)")
    return dataclasses.replace(cfg, **simulation_fields(path), pretrained=name,
                               finetune=args.finetune, adapter_rank=args.adapter_rank), said

