"""Training's iterative prompt sampler is the evaluation click simulator with training settings."""

import numpy as np
import pytest
import torch

from sonosam.evaluate.clicks import ClickSimulator, box_from_mask, error_regions, first_click
from sonosam.train.engine import group_by_shape, low_res_target
from sonosam.train.losses import bernoulli_kl, click_loss, dice_focal_loss
from sonosam.train.prompts import PromptSampler, to_model_inputs


def blob(shape=(120, 100), center=(60, 50), radius=(25, 18)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - center[0]) / radius[0]) ** 2 + ((xx - center[1]) / radius[1]) ** 2 <= 1


def test_sampler_is_the_shared_simulator():
    sampler = PromptSampler(rng=3)
    assert isinstance(sampler.simulator, ClickSimulator)
    assert sampler.simulator.mode == "random"
    gt = blob()
    # the same generator state gives the same first click as the evaluation module's own function
    a = PromptSampler(rng=np.random.default_rng(7), point_jitter=0.2).start(gt, "point")
    b = first_click(gt, 0.2, np.random.default_rng(7))
    assert a.points.tolist() == [list(b.xy)] and a.labels.tolist() == [1]
    c = PromptSampler(rng=np.random.default_rng(7), box_jitter=0.2).start(gt, "box")
    assert tuple(c.box) == box_from_mask(gt, 0.2, np.random.default_rng(7))


def test_first_prompt_rules():
    gt = blob()
    rows, cols = np.nonzero(gt)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    sampler = PromptSampler(rng=0, point_jitter=0.2, box_jitter=0.2)
    kinds = [sampler.choose_start() for _ in range(400)]
    assert 0.4 < kinds.count("point") / len(kinds) < 0.6          # point or box, equally likely
    for _ in range(50):
        p = sampler.start(gt, "point")
        (x, y), = p.points.astype(int)
        assert gt[y, x] and abs(x - cols.mean()) <= 0.2 * w + 1 and abs(y - rows.mean()) <= 0.2 * h + 1
        box = sampler.start(gt, "box").box
        tight = box_from_mask(gt)
        assert all(abs(a - b) <= 0.2 * (w if i % 2 == 0 else h) + 1 for i, (a, b) in enumerate(zip(box, tight)))


def test_corrections_fall_in_the_error_region_with_the_right_label():
    gt = blob()
    sampler = PromptSampler(rng=1)
    prompts = sampler.start(gt, "point")
    under = blob(radius=(12, 9))                    # prediction too small: positive clicks in the missed ring
    click, prompts = sampler.correct(under, gt, prompts)
    assert click.label == 1 and gt[click.y, click.x] and not under[click.y, click.x]
    over = blob(radius=(40, 40))                    # too big: negative clicks outside the structure
    click, prompts = sampler.correct(over, gt, prompts)
    assert click.label == 0 and over[click.y, click.x] and not gt[click.y, click.x]
    largest = error_regions(over, gt)[0][0]
    assert largest[click.y, click.x]
    assert prompts.labels.tolist() == [1, 1, 0] and len(prompts.points) == 3
    assert sampler.correct(gt, gt, prompts) == (None, prompts)   # perfect: nothing to click


def test_prompt_batches_are_grouped_by_shape_and_mapped_like_decode():
    from segment_anything.utils.transforms import ResizeLongestSide

    gt = blob()
    sampler = PromptSampler(rng=0)
    prompts = [sampler.start(gt, k) for k in ("point", "box", "point")]
    groups = group_by_shape(prompts)
    assert sorted(map(sorted, groups)) == [[0, 2], [1]]
    transform = ResizeLongestSide(256)
    t = to_model_inputs([prompts[0], prompts[2]], [gt.shape] * 2, transform, torch.device("cpu"))
    assert t.boxes is None and t.points[0].shape == (2, 1, 2)
    expected = transform.apply_coords(np.asarray(prompts[0].points, float), gt.shape)
    assert np.allclose(t.points[0][0].numpy(), expected)


def test_targets_and_losses():
    gt = blob((200, 100))
    target = low_res_target(gt, (256, 128), 256)
    assert target.shape == (1, 256, 256) and target[:, :, 128:].sum() == 0     # padding right of the image
    logits = (target * 2 - 1)[None] * 20
    assert dice_focal_loss(logits, target[None]).item() < 0.01
    assert dice_focal_loss(-logits, target[None]).item() > 1.0
    assert bernoulli_kl(logits, logits).item() == pytest.approx(0, abs=1e-6)
    assert bernoulli_kl(logits, -logits).item() > 1


def test_click_loss_reads_the_logit_under_each_click_in_input_pixels():
    logits = torch.full((2, 1, 256, 256), -6.0, requires_grad=True)
    inside = torch.zeros(2, 1, 256, 256)
    inside[0, 0, 100:110, 50:60] = 12.0                     # low-res rows 100-109, columns 50-59: positive
    x = logits + inside
    at = [55 * 4 + 1.5, 105 * 4 + 1.5]                      # (x, y) in 1024-pixel input coordinates, inside
    points = torch.tensor([[at, [8.0, 8.0]], [at, [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])                # sample 1's second point is padding
    loss = click_loss(x, points, labels, 1024)
    assert loss[0].item() < 0.01                            # both clicks followed
    assert loss[1].item() == pytest.approx(6.0, abs=0.01)   # its positive click lies on a -6 logit
    loss.sum().backward()
    touched = logits.grad.abs().sum((0, 1)) > 0
    assert touched.sum() <= 8 and touched[104:107, 54:57].any()   # only the pixels under the clicks


def test_point_start_probability_and_mask_feedback_switch():
    from segment_anything.utils.transforms import ResizeLongestSide

    from sonosam.train.engine import iterate_prompts

    starts = [PromptSampler(rng=s, point_start=0.9).choose_start() for s in range(200)]
    assert 0.8 < starts.count("point") / len(starts) < 0.97
    assert {PromptSampler(rng=s, point_start=0.0).choose_start() for s in range(20)} == {"box"}
    gt = blob()
    for feedback in (True, False):
        seen = []

        def forward(indices, tensors, mask_in):
            seen.append(mask_in is not None)
            return torch.zeros(len(indices), 1, 256, 256), torch.zeros(len(indices), 1)

        iterate_prompts(forward, [gt], [(gt.shape, (256, 213))], PromptSampler(rng=0), ResizeLongestSide(256), 256,
                        3, torch.device("cpu"), mask_feedback=feedback)
        assert seen == [False, feedback, feedback]


def test_only_graded_iterations_keep_a_graph():
    from segment_anything.utils.transforms import ResizeLongestSide

    from sonosam.train.engine import iterate_prompts

    gt = blob()
    weight = torch.ones(1, requires_grad=True)
    seen = []

    def forward(indices, tensors, mask_in):
        logits = torch.zeros(len(indices), 1, 256, 256) * weight
        return logits, torch.zeros(len(indices), 1)

    def on_output(iteration, indices, logits, iou, final=False, prompts=None):
        seen.append((iteration, logits.requires_grad))

    iterate_prompts(forward, [gt], [(gt.shape, (256, 213))], PromptSampler(rng=0), ResizeLongestSide(256), 256,
                    4, torch.device("cpu"), on_output, graded={1, 3})
    assert seen == [(0, False), (1, True), (2, False), (3, True)]


def test_validation_score_modes():
    from sonosam.train.finetune import validation_score

    m = {"clicks": 3, "dice@1": 0.6, "dice@2": 0.0, "dice@3": 0.9, "box": 0.9}
    assert validation_score(m) == pytest.approx(0.8)              # Dice@1, @3, box
    assert validation_score(m, "curve") == pytest.approx(0.6)     # Dice@1..3, box: a bad 2nd click counts


def test_ship_rule_names_every_failed_check():
    from sonosam.train.click_decoder import NEW_ROW, OLD_ROW, ship_rule

    def row(curve, box):
        return {**{f"dice@{k + 1}": v for k, v in enumerate(curve)}, "box": box}

    old = row([0.50, 0.48, 0.60, 0.62, 0.62], 0.70)
    good = {"a": {OLD_ROW: old, NEW_ROW: row([0.55, 0.58, 0.63, 0.64, 0.65], 0.70)},
            "b": {OLD_ROW: old, NEW_ROW: row([0.50, 0.55, 0.61, 0.62, 0.62], 0.695)}}
    passed, reasons = ship_rule(good)
    assert passed and "+1.5 points" in reasons[0]
    bad = {"a": {OLD_ROW: old, NEW_ROW: row([0.60, 0.55, 0.63, 0.66, 0.70], 0.68)}}   # box -2, Dice@2 falls by 5
    passed, reasons = ship_rule(bad)
    assert not passed
    assert reasons == ["a box: 2.0 points below " + OLD_ROW, "mean Dice@2 55.0 < Dice@1 60.0 - 1"]
