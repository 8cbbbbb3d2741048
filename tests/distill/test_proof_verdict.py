"""The proof's verdict reads the issue's claim correctly off its table (no training here)."""

from __future__ import annotations

import torch

from rsd_deploy.distill.losses import EVAL_BACKBONE_SEED, LPIPSLoss
from rsd_deploy.distill.proof import markdown, verdict


def rows(student_psnr: float, student_lpips: float) -> dict:
    return {
        "bicubic": {"psnr": 29.0, "ssim": 0.78, "lpips": 0.0100, "seconds": 0.1},
        "teacher, 1 step": {"psnr": 28.5, "ssim": 0.75, "lpips": 0.0095, "seconds": 1.0},
        "teacher, 15 steps": {"psnr": 28.4, "ssim": 0.76, "lpips": 0.0096, "seconds": 9.0},
        "RSD student, 1 step": {"psnr": student_psnr, "ssim": 0.74, "lpips": student_lpips, "seconds": 1.0},
    }


def test_claim_is_perceptual_win_and_fidelity_within_half_a_db():
    holds = verdict(rows(28.0, 0.0094), 15)
    assert holds["claim_holds"] and not holds["also_reported"]["student PSNR > teacher 1-step PSNR"]
    assert not verdict(rows(27.8, 0.0094), 15)["claim_holds"]  # 0.6 dB below the 15-step teacher
    assert not verdict(rows(28.6, 0.0095), 15)["claim_holds"]  # LPIPS only ties the 1-step teacher


def test_markdown_states_the_verdict():
    report = {"rows": rows(28.0, 0.0094), "crops": 2, "crop_hr": 128, "photos": ["coffee"], "seeds": [0],
              "degradation": "bicubic", "lpips": "LPIPS-alex(random backbone, seed 1)"}
    report["verdict"] = verdict(report["rows"], 15)
    text = markdown(report)
    assert "Claim holds: **yes**" in text and "| 0.00940 |" in text


def test_evaluation_backbone_is_not_the_training_one():
    train, evaluate, again = LPIPSLoss("random"), LPIPSLoss("random", seed=EVAL_BACKBONE_SEED), LPIPSLoss("random", seed=EVAL_BACKBONE_SEED)
    first = lambda m: next(m.net.net.parameters())
    assert not torch.equal(first(train), first(evaluate))
    assert torch.equal(first(evaluate), first(again))  # seeded: the metric is reproducible
