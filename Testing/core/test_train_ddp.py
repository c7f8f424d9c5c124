"""Decoder fine-tuning under torchrun with PyTorch DistributedDataParallel: 2 CPU processes (gloo) on real
MRI slices (Colin27 T1 + AAL), LiteMedSAM's real weights. Both ranks must end with the same weights (the
gradients are all-reduced once per step although each rank runs its own number of prompt iterations and
prompt groups), and the loss on a fixed probe batch must fall."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    from sonosam.evaluate import colin27_samples
    from sonosam.models import load_model
    from sonosam.train import TrainConfig, train_decoder
    from sonosam.train.engine import PromptDecoder, low_res_target
    from sonosam.train.losses import dice_focal_loss
    from sonosam.train.prompts import to_model_inputs
    from sonosam.evaluate.clicks import ClickSimulator

    out, cache = sys.argv[1], sys.argv[2]
    samples = colin27_samples(labels=None, axis=0, min_area=300, max_samples=None, slices=[72, 90])[:16]
    model = load_model("litemedsam", device="cpu")
    net = PromptDecoder(model.sam.prompt_encoder, model.sam.mask_decoder)
    from sonosam.train.cache import EmbeddingStore, input_size_for
    store = EmbeddingStore(cache, model)
    probe = samples[::2][:6]

    def probe_loss():   # centroid clicks, no randomness: the same batch before and after training
        with torch.no_grad():
            feats = torch.stack([store.get(s.image).features for s in probe])
            sizes = [s.image.shape[:2] for s in probe]
            prompts = [ClickSimulator().start(s.mask, "point") for s in probe]
            t = to_model_inputs(prompts, sizes, model.transform, torch.device("cpu"))
            logits, _ = net(feats, t.points, t.boxes, None)
            target = torch.stack([low_res_target(s.mask, input_size_for(s.image.shape[:2], 256), 256) for s in probe])
            return float(dice_focal_loss(logits, target).mean())

    before = probe_loss()
    config = TrainConfig(epochs=2, batch_size=4, samples_per_epoch=16, max_corrections=3, lr=5e-4,
                         val_samples=0, cache_dir=cache, progress=False, mask_feedback_p=0.7, point_start=0.7)
    result = train_decoder(model, samples, [], config, None, log=None)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.sam.state_dict().items()):
        digest.update(name.encode()); digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    rank = int(os.environ["RANK"])
    json.dump({"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "digest": digest.hexdigest(),
               "steps": result.steps, "losses": result.losses, "probe_before": before, "probe_after": probe_loss()},
              open(os.path.join(out, f"rank{rank}.json"), "w"))
''')


def test_two_cpu_processes_keep_equal_weights_and_the_loss_falls(tmp_path):
    from sonosam.evaluate import colin27_samples
    from sonosam.models import load_model
    from sonosam.train.cache import EmbeddingStore

    cache = tmp_path / "cache"
    # encode the two slices once here, so the ranks only read the cache
    samples = colin27_samples(labels=None, axis=0, min_area=300, max_samples=None, slices=[72, 90])
    EmbeddingStore(cache, load_model("litemedsam", device="cpu")).precompute([s.image for s in samples],
                                                                               progress=False)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(worker), str(tmp_path), str(cache)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4      # 2 epochs x 16 samples / 2 ranks / batch 4
    assert ranks[0]["digest"] == ranks[1]["digest"]         # identical weights on both ranks
    assert ranks[0]["losses"] != ranks[1]["losses"]         # ... from different data shares
    assert ranks[0]["probe_after"] < ranks[0]["probe_before"]
    assert ranks[1]["probe_after"] == pytest.approx(ranks[0]["probe_after"], rel=1e-5)
