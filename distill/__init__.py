"""Training for the RSD family: data and Real-ESRGAN degradations, the ResShift teacher objective,
RSD distillation (and the sibling TAD-SR / TSD-SR objectives), the trainer behind ``rsd-distill``,
and ``proof.py``, the small end-to-end run that produces the bundled demo checkpoints.
See docs/distill.md."""
