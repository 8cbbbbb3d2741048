"""The proof's verdict reads the issue's claim correctly off its table (no training here)."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy.distill.proof import markdown, verdict
from rsd_deploy.metrics import EVAL_BACKBONE_SEED, LPIPS


def rows(student_psnr: float, student_lpips: float) -> dict:
    return {
        "bicubic": {"psnr": 29.0, "ssim": 0.78, "lpips": 0.0100, "seconds": 0.1},
        "teacher, 1 step": {"psnr": 28.5, "ssim": 0.75, "lpips": 0.0095, "seconds": 1.0},
        "teacher, 15 steps": {"psnr": 28.4, "ssim": 0.76, "lpips": 0.0096, "seconds": 9.0},
        "RSD student, 1 step": {"psnr": student_psnr, "ssim": 0.74, "lpips": student_lpips, "seconds": 1.0},
    }


def photos(student_psnr: float = 27.0, student_lpips: float = 0.2) -> dict:
    bicubic = {"psnr": 26.5, "ssim": 0.70, "lpips": 0.25}
    return {"grace_hopper": {"size": "512x600", "bicubic": bicubic, "student": {"psnr": student_psnr, "ssim": 0.71, "lpips": student_lpips}}}


def test_claim_is_perceptual_win_and_fidelity_within_half_a_db():
    holds = verdict(rows(28.0, 0.0094), 15, photos())
    assert holds["claim_holds"] and not holds["also_reported"]["student PSNR > teacher 1-step PSNR"]
    assert not verdict(rows(27.8, 0.0094), 15, photos())["claim_holds"]  # 0.6 dB below the 15-step teacher
    assert not verdict(rows(28.6, 0.0095), 15, photos())["claim_holds"]  # LPIPS only ties the 1-step teacher


@pytest.mark.parametrize("psnr, lpips", [(26.4, 0.2), (27.0, 0.26)])
def test_claim_needs_bicubic_beaten_on_every_photo_in_psnr_and_lpips(psnr, lpips):
    checked = verdict(rows(28.0, 0.0094), 15, photos(psnr, lpips))
    assert not checked["claim_holds"]
    assert not all(v for k, v in checked["claim"].items() if k.startswith("grace_hopper"))


def test_markdown_states_the_verdict():
    report = {"rows": rows(28.0, 0.0094), "crops": 2, "crop_hr": 128, "photos": ["coffee"], "seeds": [0],
              "degradation": "bicubic", "lpips": "LPIPS-alex(random backbone, seed 1)", "unseen": ["grace_hopper"],
              "photo_rows": photos()}
    report["verdict"] = verdict(report["rows"], 15, report["photo_rows"])
    text = markdown(report)
    assert "Claim holds: **yes**" in text and "| 0.00940 |" in text and "| grace_hopper | 512x600 | 26.50 | 27.00 |" in text


def test_evaluation_backbone_is_not_the_training_one():
    train, evaluate, again = LPIPS("random"), LPIPS("random", seed=EVAL_BACKBONE_SEED), LPIPS("random", seed=EVAL_BACKBONE_SEED)
    first = lambda m: next(m.net.net.parameters())
    assert not torch.equal(first(train), first(evaluate))
    assert torch.equal(first(evaluate), first(again))  # seeded: the metric is reproducible
