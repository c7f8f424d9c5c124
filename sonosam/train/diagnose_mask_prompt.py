"""Why feeding the previous logits back as the mask prompt hurt a box-trained LiteMedSAM decoder
(docs/training.md, issue 14): the size of the mask path's dense embedding next to "no mask" and the image
embedding, and Dice at clicks 1..5 of a decoder with and without mask feedback on held-out MRI.

    python -m sonosam.train.diagnose_mask_prompt --cache runs/cache [--model litemedsam_clicks] [--every 3]
"""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sonosam.train.diagnose_mask_prompt")
    parser.add_argument("--cache", default="runs/cache")
    parser.add_argument("--model", default="litemedsam_clicks")
    parser.add_argument("--every", type=int, default=3, help="score every Nth held-out MRI structure-slice")
    args = parser.parse_args(argv)

    import torch

    from ..models import load_model
    from .cache import EmbeddingStore
    from .click_data import build_sources
    from .click_decoder import heldout_metrics
    from .finetune import clickable

    base, model = load_model("litemedsam"), load_model(args.model)
    encoder = base.sam.prompt_encoder
    test = build_sources(("mri",))["mri"].split.test[::args.every]
    store = EmbeddingStore(args.cache, base)
    rms = lambda t: float(t.detach().pow(2).mean().sqrt())  # noqa: E731
    print(f"image embedding rms {rms(store.get(test[0].image).features):.3f}; "
          f"no_mask_embed rms {rms(encoder.no_mask_embed.weight):.3f}")
    for scale in (1, 5, 20):
        logits = torch.full((1, 1, 256, 256), -float(scale))
        logits[..., 100:150, 100:150] = scale
        with torch.no_grad():
            print(f"mask prompt of logits +-{scale}: dense embedding rms {rms(encoder._embed_masks(logits)):.3f}")
    for mask in (False, True):
        m = heldout_metrics(clickable(model, mask=mask), store, test)
        print(f"{args.model}, mask feedback {mask}, {len(test)} samples: Dice@1..5 "
              + " / ".join(f"{m[f'dice@{k}']:.3f}" for k in range(1, 6)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
