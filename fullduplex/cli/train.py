"""``fullduplex train`` (run a fine-tuning recipe) and ``fullduplex export`` (a run → a servable folder)."""

from __future__ import annotations

import argparse

TRAIN_EPILOG = """\
examples:
  fullduplex train examples/train/lora.yaml
  fullduplex train recipe.yaml --override optim.max_steps=200 --override run.output=runs/try2
  fullduplex train moshi_7B.yaml                                 # moshi-finetune's recipe, as it is
  fullduplex train examples/demo/codec.yaml                      # task: codec (a Mimi-architecture codec)
  torchrun --nproc-per-node 8 -m fullduplex train examples/train/human1_stage1.yaml
  torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      -m fullduplex train examples/train/human1_stage1.yaml

A recipe is a YAML file with sections model, data, lora, optim, loss, run, wandb (docs/training.md lists every
field). A moshi-finetune recipe (its example/moshi_7B.yaml: moshi_paths, data.train_data, run_dir, ...) runs as it
is: its jsonl manifests are prepared once into RUN_DIR.prepared/, and the equivalent native recipe is printed and
written to RUN_DIR/recipe.yaml; `--override` then takes its keys (max_steps=10, lora.rank=16).
With `task: codec` it trains a Mimi-architecture codec on speech instead (examples/demo/codec.yaml, docs/demo.md).
Running again with the same run.output resumes from its latest checkpoint: weights, optimiser, schedule, data
position and random states, so the remaining steps are those of an uninterrupted run. With run.global_batch set, a
run also resumes on another number of GPUs or nodes, with the same windows per step (docs/training.md).
"""

EXPORT_EPILOG = """\
examples:
  fullduplex export runs/hindi --output models/hindi                 # best checkpoint, LoRA merged
  fullduplex export runs/hindi --output models/hindi-last --checkpoint last --dtype bfloat16
  fullduplex export runs/lora --output models/lora --keep-lora       # base + lora.safetensors
  fullduplex export runs/hindi --output models/hindi-mlx --format mlx-q8 --mimi-weight mimi.safetensors
  fullduplex export --lora-weight lora.safetensors --hf-repo kyutai/moshiko-pytorch-bf16 --output models/ft
  fullduplex export runs/hindi --output models/hindi --checkpoint last --overwrite   # replace an earlier export

DIR must be new or empty. A folder holding a previous export (its config.json names every file in it) is
replaced only with --overwrite; any other folder, or one holding the run itself, is refused and left untouched.
The folder holds model.safetensors (released key format), config.json and the tokenizer: pass it to
`fullduplex serve --moshi-weight DIR`, `fd.load_lm(DIR)`, or moshi's `--moshi-weight DIR/model.safetensors
--config-path DIR/config.json`.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="fine-tune the LM on training shards (one process, or torchrun for many GPUs)",
        description="Run a fine-tuning recipe: full fine-tuning or LoRA, FSDP2 under torchrun, validation, best "
        "checkpoint, exact resume.", epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="the recipe: native, or moshi-finetune's (moshi_7B.yaml)")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="change one field, e.g. optim.max_steps=200 (repeatable; values are YAML)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, as --quiet (metrics.jsonl is always written)")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "export", help="a training run (or moshi-finetune LoRA adapters) -> a folder that serves",
        description="Write model.safetensors (released format, LoRA folded in), config.json and the tokenizer.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run.output folder of `fullduplex train`")
    e.add_argument("--output", required=True, metavar="DIR",
                   help="folder to write: new or empty (built beside it, then renamed into place)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace DIR when it holds a previous export (and nothing else); never the run's own folder")
    e.add_argument("--checkpoint", default="best", metavar="best|last|STEP",
                   help="which checkpoint: lowest validation loss (default), the latest, or a step")
    e.add_argument("--keep-lora", action="store_true",
                   help="keep base weights unmerged and write the adapters to lora.safetensors (moshi-finetune names)")
    e.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="weights on disk for --format moshi (default: float32, the training precision)")
    e.add_argument("--format", default="moshi", choices=["moshi", "mlx-bf16", "mlx-q8", "mlx-q4"],
                   help="moshi: the released PyTorch layout (default); mlx-*: model[.q8|.q4].safetensors that "
                   "moshi_mlx loads (runs on a Mac)")
    e.add_argument("--mimi-weight", metavar="FILE", help="Mimi checkpoint to copy into the folder (an MLX folder "
                   "for moshi_mlx needs one)")
    g = e.add_argument_group("moshi-finetune adapters (instead of RUN_DIR)")
    g.add_argument("--lora-weight", metavar="FILE", help="lora.safetensors trained with moshi-finetune")
    g.add_argument("--lora-scaling", type=float, default=None,
                   help="default: lora_scaling of the config.json beside FILE, else 2.0")
    g.add_argument("--moshi-weight", metavar="FILE", help="base LM: file, folder or hf://OWNER/REPO[/FILE]")
    g.add_argument("--hf-repo", metavar="OWNER/NAME", help="base repo (default kyutai/moshiko-pytorch-bf16)")
    g.add_argument("--config", metavar="PRESET_OR_JSON", help="base LM architecture")
    g.add_argument("--tokenizer", metavar="FILE", help="tokenizer to copy into the folder")
    e.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    from ..train.codec import read_task

    if read_task(args.config, args.override) == "codec":
        return run_train_codec(args)
    from ..train.config import load_config, read_recipe
    from ..train.moshi_finetune import from_moshi_finetune, is_moshi_finetune
    from ..train.recipe import train

    raw = read_recipe(args.config, args.override)
    if is_moshi_finetune(raw):  # kyutai-labs/moshi-finetune's YAML: translated, its data prepared once
        cfg = from_moshi_finetune(args.config, raw, quiet=args.no_progress or args.quiet)
    else:
        cfg = load_config(args.config, args.override)
    result = train(cfg, progress=not (args.no_progress or args.quiet))
    import os

    if os.environ.get("RANK", "0") == "0":
        last = result.losses.get(result.last_step)
        resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
        loss = f", last loss {last:.4f}" if last is not None else ""
        print(f"trained to step {result.last_step}{resumed}{loss}; run folder {cfg.run.output}")
    return 0


def run_train_codec(args: argparse.Namespace) -> int:
    from ..train.codec import load_codec_config, train_codec

    cfg = load_codec_config(args.config, args.override)
    result = train_codec(cfg, progress=not (args.no_progress or args.quiet))
    last = result.losses.get(result.last_step)
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
    loss = f", last loss {last:.4f}" if last is not None else ""
    exported = f"; codec {result.exported}" if result.exported else ""
    print(f"trained the codec to step {result.last_step}{resumed}{loss}; run folder {cfg.run.output}{exported}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import torch

    from ..errors import FullduplexError
    from ..train.export import STAGES, export_lora_weight, export_run
    from .stages import stage_bar

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype or "")
    if (args.run_dir is None) == (args.lora_weight is None):
        raise FullduplexError("export needs either RUN_DIR or --lora-weight FILE (not both)")
    if args.lora_weight is not None:
        with stage_bar(STAGES, "export", args.quiet) as on_stage:
            out = export_lora_weight(args.lora_weight, args.output, args.moshi_weight, args.hf_repo, args.config,
                                     args.tokenizer, args.lora_scaling, dtype, fmt=args.format, mimi=args.mimi_weight,
                                     overwrite=args.overwrite, on_stage=on_stage)
        print(f"wrote {out} (adapters of {args.lora_weight} folded in)")
        return 0
    with stage_bar(STAGES, "export", args.quiet) as on_stage:
        out, step = export_run(args.run_dir, args.output, args.checkpoint, args.keep_lora, dtype, fmt=args.format,
                               mimi=args.mimi_weight, overwrite=args.overwrite, on_stage=on_stage)
    print(f"wrote {out} from step {step} of {args.run_dir}")
    return 0
