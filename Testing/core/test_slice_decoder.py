"""The slice decoder's training (issue 16): its data never holds propagation's test structures, its first prompt
is the one propagation makes, and real training steps on real Colin27 embeddings move the decoder and make the
mask prompt count."""

import numpy as np
import torch

from sonosam.train.slice_decoder import SlicePair, _Pairs, _batch, _run, colin27_pairs, excluded_labels, perturb


def test_pairs_leave_out_every_test_structure_on_both_sides():
    from sonosam.references import COLIN27_AAL

    skip = excluded_labels()
    for value, _ in COLIN27_AAL.values():   # Insula_L (29) is a test row: Insula_R (30) goes too
        assert value in skip and (value + 1 if value % 2 else value - 1) in skip
    parts = colin27_pairs()
    assert len(parts["train"]) > 5000 and len(parts["val"]) > 500
    for part in parts.values():
        assert not {p.label for p in part} & skip
    slices = {part: {(p.axis, p.index) for p in pairs} for part, pairs in parts.items()}
    assert not slices["train"] & slices["val"]          # split by slab, never by slice


def test_lobes_are_large_unions_of_aal_labels_without_a_test_structure(default_model, tmp_path):
    from sonosam.train.cache import EmbeddingStore
    from sonosam.train.click_data import _colin27_arrays
    from sonosam.train.slice_decoder import FIRST_UNION, unions

    lobes, aal = unions(), _colin27_arrays()[1]
    assert len(lobes) == 12 and min(lobes) == FIRST_UNION
    assert not {v for members in lobes.values() for v in members} & excluded_labels()
    assert all(len({v % 2 for v in members}) == 1 for members in lobes.values())       # one side each
    assert min(int(np.isin(aal, members).sum()) for members in lobes.values()) > 30000
    pairs = _Pairs(default_model, EmbeddingStore(tmp_path / "cache", default_model))
    frontal_left = pairs.mask(0, 100, FIRST_UNION)
    assert np.array_equal(frontal_left, np.isin(aal[100], lobes[FIRST_UNION])) and frontal_left.sum() > 1000
    assert any(p.label >= FIRST_UNION for p in colin27_pairs(lobes=True)["val"])
    assert not any(p.label >= FIRST_UNION for p in colin27_pairs()["train"])   # only when asked (--union-share)


def test_perturb_keeps_a_nearby_nonempty_mask():
    mask = np.zeros((60, 60), bool)
    mask[20:40, 15:45] = True
    rng = np.random.default_rng(0)
    outs = [perturb(mask, rng) for _ in range(30)]
    assert all(o.any() for o in outs)
    assert any(not np.array_equal(o, mask) for o in outs)
    assert min((o & mask).sum() / (o | mask).sum() for o in outs) > 0.5


def test_first_prompt_is_propagations_and_training_steps_use_the_mask(default_model, tmp_path):
    from sonosam.models import SamModel, load_model
    from sonosam.train.cache import EmbeddingStore
    from sonosam.train.click_decoder import gentle_mask_init
    from sonosam.train.engine import PromptDecoder
    from sonosam.train.finetune import trainable_parameters
    from sonosam.train.prompts import PromptSampler

    model = load_model("litemedsam_clicks", device="cpu", backend="eager")
    assert isinstance(model, SamModel)
    pairs = _Pairs(model, EmbeddingStore(tmp_path / "cache", model))
    batch = [SlicePair(0, 75, -1, 85), SlicePair(0, 75, 1, 85)]   # Temporal_Mid_L (85) on axial slices 74-76
    rng, sampler = np.random.default_rng(0), PromptSampler(0)
    pairs_, gts, sizes, starts, first, carried = _batch(pairs, batch, rng, True, sampler)
    assert len(pairs_) == 2 and first.shape == (2, 1, 256, 256) and len(carried) == 2
    for pair, gt, start in zip(batch, gts, starts):
        assert gt.any() and start.box is not None and len(start.points) >= 1
        x0, y0, x1, y1 = start.box
        prev = pairs.mask(pair.axis, pair.index + pair.offset, pair.label)
        inside = [prev[int(round(y)), int(round(x))] or gt[int(round(y)), int(round(x))] for x, y in start.points]
        assert all(inside)   # the clicks are deep inside the carried mask (before its perturbation)
    assert (first > 0).any() and (first < 0).any()

    gentle_mask_init(model.sam.prompt_encoder)
    net = PromptDecoder(model.sam.prompt_encoder, model.sam.mask_decoder)
    prepared = (pairs_, gts, sizes, starts, first, carried)
    with_mask = _run(net, model, pairs, prepared, sampler, 1, torch.device("cpu"))
    without = _run(net, model, pairs, prepared, sampler, 1, torch.device("cpu"), mask=False)
    assert with_mask != without                          # the mask prompt reaches the decoder
    before = [p.detach().clone() for p in trainable_parameters(model.sam)]
    optimizer = torch.optim.Adam(trainable_parameters(model.sam), lr=1e-4)
    dices = _run(net, model, pairs, prepared, sampler, 2, torch.device("cpu"), optimizer)
    assert len(dices) == 2 and all(0 <= d <= 1 for d in dices)
    moved = [not torch.equal(a, b) for a, b in zip(before, trainable_parameters(model.sam))]
    assert sum(moved) > len(moved) // 2
    assert not any(p.requires_grad for p in model.sam.image_encoder.parameters())   # the encoder stays frozen


def test_model_free_tissue_is_trained_on_but_never_the_bench_ventricles_or_white_matter():
    from scipy import ndimage

    from sonosam.references import colin27_references
    from sonosam.train.slice_decoder import CEREBELLAR_WM, FIRST_CSF, training_labels

    labels = training_labels()
    assert not np.isin(labels, sorted(excluded_labels())).any()
    assert (labels == CEREBELLAR_WM).sum() > 5000 and labels.max() >= FIRST_CSF + 3   # several CSF parts
    refs = colin27_references(aal=False).references
    near = ndimage.binary_dilation(refs["Lateral_Ventricle_L"].mask | refs["Lateral_Ventricle_R"].mask, iterations=3)
    assert not (near & (labels >= FIRST_CSF)).any()
    wm = refs["White_Matter_L"].mask | refs["White_Matter_R"].mask
    assert not (wm & (labels == CEREBELLAR_WM)).any()     # the bench's white matter is the cerebrum's


def test_rollouts_carry_the_decoders_own_answers_and_stop_where_told(tmp_path):
    from sonosam.models import load_model
    from sonosam.train.cache import EmbeddingStore
    from sonosam.train.engine import PromptDecoder
    from sonosam.train.finetune import trainable_parameters
    from sonosam.train.prompts import PromptSampler
    from sonosam.train.slice_decoder import _rollout

    model = load_model("litemedsam_slices", device="cpu", backend="eager")
    pairs = _Pairs(model, EmbeddingStore(tmp_path / "cache", model))
    net, device = PromptDecoder(model.sam.prompt_encoder, model.sam.mask_decoder), torch.device("cpu")
    start = [SlicePair(0, 75, -1, 85)]   # Temporal_Mid_L carried up from slice 74: 75, then 76
    with torch.no_grad():
        dices = _rollout(net, model, pairs, start, np.random.default_rng(0), PromptSampler(0), 2, device)
    assert len(dices) == 2 and min(dices) > 0.6          # the shipped carrier follows the structure on its answers
    with torch.no_grad():
        stopped = _rollout(net, model, pairs, start, np.random.default_rng(0), PromptSampler(0), 2, device,
                           allowed=lambda axis, index: index != 76)
    assert stopped == dices[:1]                          # the refused slice ends the rollout; the first step is kept
    before = [p.detach().clone() for p in trainable_parameters(model.sam)]
    optimizer = torch.optim.Adam(trainable_parameters(model.sam), lr=1e-4)
    _rollout(net, model, pairs, start, np.random.default_rng(0), PromptSampler(0), 2, device, optimizer)
    assert sum(not torch.equal(a, b) for a, b in zip(before, trainable_parameters(model.sam))) > len(before) // 2
