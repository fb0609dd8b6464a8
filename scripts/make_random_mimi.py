"""Write a Mimi checkpoint with random weights in the released format (for the demo; no hub needed).

    python scripts/make_random_mimi.py OUT.safetensors [--preset mimi|tiny] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

import fullduplex as fd
from fullduplex.codec import mimi_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="where to write the .safetensors file")
    parser.add_argument("--preset", default="mimi", help="architecture: mimi (released, default) or tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = fd.Mimi(mimi_preset(args.preset))
    with torch.no_grad():  # a usable random codec: visible transformers, spread-out codebooks
        for name, tensor in model.state_dict().items():
            if "layer_scale" in name:
                tensor.fill_(0.1)
            elif name.endswith("codebooks"):
                tensor.normal_()
    path = fd.save_mimi(model, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
