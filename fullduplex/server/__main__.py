"""``python -m fullduplex.server``: moshi's ``python -m moshi.server`` (0.2.13), flag for flag, on fullduplex's server.

    python -m fullduplex.server --hf-repo kyutai/moshiko-pytorch-bf16
    python -m fullduplex.server --moshi-weight model.safetensors --mimi-weight mimi.safetensors \\
        --tokenizer tokenizer.model --config-path config.json --lora-weight lora.safetensors --static none

Every flag and default of moshi's server, with the same meaning: ``--host localhost``, ``--port 8998``, the model
files (``--hf-repo`` default ``kyutai/moshiko-pytorch-bf16``), ``--config-path``, ``--lora-weight`` (folded into the
weights; ``--no_fuse_lora`` keeps it as separate low-rank layers, as moshi's), ``--half`` (float16 instead of bfloat16),
``--device cuda``, ``--ssl DIR``, ``--static`` (a folder with an index.html, or ``none``; without it fullduplex's own
page, bundled, where moshi downloads its page from the hub). Sampling follows the model's ``lm_gen_config``.
``--cfg-coef`` other than 1.0 and ``--gradio-tunnel`` are refused with one line. It then runs ``fullduplex serve``:
the same WebSocket protocol on ``/api/chat``, several conversations at once (moshi serves one), plus
``/api/health`` and ``/api/metrics``. docs/from-moshi.md maps every flag.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..checkpoint.resolve import DEFAULT_REPO
from ..errors import FullduplexError

SEED = 42424242  # moshi.server's seed_all(42424242)

EPILOG = """\
examples:
  python -m fullduplex.server --hf-repo kyutai/moshiko-pytorch-bf16
  python -m fullduplex.server --device cpu --moshi-weight model.safetensors --mimi-weight mimi.safetensors \\
      --tokenizer tokenizer.model --config-path config.json --static none

moshi's own client (python -m moshi.client) and web page talk to it unchanged. `fullduplex serve --help` shows
the native options (--max-sessions, --auth-token, personas, ...); docs/from-moshi.md maps one to the other.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fullduplex.server",
        description="The real-time server with moshi.server's command line (runs fullduplex serve).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="localhost", type=str, help="address to bind (default: localhost)")
    parser.add_argument("--port", default=8998, type=int, help="port (default: 8998)")
    parser.add_argument("--static", type=str,
                        help="folder holding the web page (index.html) to serve at /, or 'none' for no page "
                        "(default: fullduplex's own page)")
    parser.add_argument("--gradio-tunnel", action="store_true", help="not supported here (refused)")
    parser.add_argument("--gradio-tunnel-token", help="not supported here (refused)")
    parser.add_argument("--tokenizer", type=str, help="SentencePiece .model of the LM's text vocabulary")
    parser.add_argument("--moshi-weight", type=str, help="LM checkpoint: a file, folder or hf://OWNER/REPO[/FILE]")
    parser.add_argument("--mimi-weight", type=str, help="Mimi checkpoint: a file, folder or hf://OWNER/REPO[/FILE]")
    parser.add_argument("--hf-repo", type=str, default=DEFAULT_REPO,
                        help=f"Hugging Face repo of the files not given (default: {DEFAULT_REPO})")
    parser.add_argument("--lora-weight", type=str, default=None,
                        help="moshi-finetune LoRA adapters (lora.safetensors), folded into the LM with the config's "
                        "lora_scaling")
    parser.add_argument("--config-path", type=str, default=None, help="the model's config.json (default: the repo's)")
    parser.add_argument("--cfg-coef", type=float, default=1.0,
                        help="classifier-free guidance: only 1.0 (none), as the dialogue models have no conditioning")
    parser.add_argument("--device", type=str, default="cuda", help="torch device (default: cuda)")
    parser.add_argument("--no_fuse_lora", action="store_false", dest="fuse_lora", default=True,
                        help="keep the LoRA adapters as separate low-rank layers instead of folding them into "
                        "the weights")
    parser.add_argument("--half", action="store_const", const="float16", default="bfloat16", dest="dtype",
                        help="run the LM in float16 instead of bfloat16 (for old GPUs)")
    parser.add_argument("--ssl", type=str, help="serve https/wss with DIR/key.pem and DIR/cert.pem")
    return parser


def serve_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The options of ``fullduplex serve`` for moshi's flags: every other option of ``serve`` at its default (read
    from its own parser, so options added there later need nothing here)."""
    from ..cli.main import build_parser as fullduplex_parser

    defaults = fullduplex_parser().parse_args(["serve"])
    return argparse.Namespace(**{
        **vars(defaults),
        "host": args.host, "port": args.port, "ssl": args.ssl, "static": args.static or "",
        "hf_repo": args.hf_repo, "moshi_weight": args.moshi_weight, "mimi_weight": args.mimi_weight,
        "tokenizer": args.tokenizer, "config": args.config_path, "lora_weight": args.lora_weight,
        "fuse_lora": args.fuse_lora, "seed": SEED, "cfg_coef": args.cfg_coef, "device": args.device,
        "dtype": args.dtype,
    })


def check(args: argparse.Namespace) -> None:
    if args.gradio_tunnel or args.gradio_tunnel_token is not None:
        raise FullduplexError("--gradio-tunnel is not supported: reach the server through an SSH tunnel "
                              "(ssh -L 8998:localhost:8998 HOST), or bind --host 0.0.0.0 with --ssl")
    if args.cfg_coef != 1.0:
        from ..cli.models import CFG_REFUSAL

        raise FullduplexError(CFG_REFUSAL.format(coef=args.cfg_coef))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse moshi's flags and run ``fullduplex serve``; errors as one ``error: ...`` line, exit status 2."""
    from ..cli.main import run_command
    from ..cli.serve import serve_command

    def command(args: argparse.Namespace) -> int | None:
        check(args)
        return serve_command(serve_arguments(args))

    return run_command(build_parser(), argv, command)


if __name__ == "__main__":
    sys.exit(main())
