"""Is the retrieval metric able to say yes? Fine-tune a trained model briefly on passkey-format data at
one length and score passkey at that length and beyond (tools/passkey_finetune.py).

A model that has learnt to retrieve must score near 1.0 at the length it was fine-tuned on; what it
scores at 2x, 4x, 8x that length is the extrapolation the positional encoding allows. Training
samples come from another seed than the evaluation's (other keys, fillers cut elsewhere, random
depths), so the score is not memorisation. The loss is the answer's tokens only: the task, not the
filler, is what is fine-tuned.
"""
from __future__ import annotations

import random
import time
from typing import Sequence

import torch

TRAIN_SEED = 10_000  # evaluation samples use the seed given on the command line (default 0)


def passkey_batch(encode, length: int, batch: int, step: int, seed: int = TRAIN_SEED):
    """(input_ids (b, n), labels (b, n) with -1 outside the answer) of one training step."""
    from .synthetic import make_sample

    rng = random.Random(f"{seed}/depths/{step}")
    samples = [make_sample("passkey", encode, length, seed=seed, trial=step * batch + j, depth=rng.random())
               for j in range(batch)]
    n = max(len(s.prompt) + len(s.answer) for s in samples)
    ids = torch.zeros(batch, n, dtype=torch.long)
    labels = torch.full((batch, n), -1, dtype=torch.long)
    for j, s in enumerate(samples):
        seq = s.prompt + s.answer
        ids[j, :len(seq)] = torch.tensor(seq)
        # position t predicts token t + 1: the answer's tokens are labels of the positions before them
        labels[j, len(s.prompt) - 1:len(seq) - 1] = torch.tensor(s.answer)
    return ids[:, :-1], labels[:, :-1]


def finetune(model, encode, *, length: int, steps: int, batch: int = 16, lr: float = 1e-3,
             warmup: int = 10, log=print) -> list[float]:
    """AdamW on the answer-token loss, linear warm-up then constant; returns the loss of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        ids, labels = passkey_batch(encode, length, batch, step)
        mask = labels >= 0
        nll = model(ids, None, None, labels=labels.clamp_min(0))
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            log(f"step {step}  answer loss {loss.item():.3f}  {time.perf_counter() - start:.0f}s")
    model.eval()
    return losses


def score_passkey(model, encode, lengths: Sequence[int], *, depths, trials: int, seed: int, batch_size: int = 8):
    """The passkey section of the evaluation JSON for this model (suite.run_suite)."""
    from .suite import run_suite

    def logits_fn(ids, k):
        with torch.no_grad():
            return model.last_logits(ids, k).float()

    return run_suite(tasks=["passkey"], lengths=lengths, logits_fn=logits_fn, encode=encode, depths=depths,
                     trials=trials, seed=seed, batch_size=batch_size)
