"""Preference optimization losses on sequence log-probabilities, and their metrics.

DPO (sigmoid), IPO and SLiC-hinge compare the policy's log-probability ratio over the reference model for the
chosen reply with the rejected one's; the reference log-probabilities are computed once, before training, by the
model as loaded. SimPO and ORPO are reference-free: they compare the replies' length-normalized log-likelihoods
(ORPO through their odds, added to the chosen reply's token loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from luban.config import PreferenceConfig
from luban.data.chat import IGNORE
from luban.training.targets import target_logits

REFERENCE_FREE = ("simpo", "orpo")


def sequence_logps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of log p(y_t | x_<=t) over the trained (non-IGNORE) targets, and how many there are."""
    logits, targets, row = target_logits(model, x, y)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return torch.zeros(len(x), dtype=logp.dtype, device=logp.device).index_add(0, row, logp), (y != IGNORE).sum(-1)


def pair_logps(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """[pairs, 2] (chosen, rejected) log-probability sums and token counts of a data.preference.pair_batch (its
    rows: every chosen reply, then every rejected one)."""
    lp, n = sequence_logps(model, batch["x"], batch["y"])
    k = len(batch["index"])
    return torch.stack([lp[:k], lp[k:]], 1), torch.stack([n[:k], n[k:]], 1)


def chosen_token_loss(policy: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per token of the chosen replies."""
    return -policy[:, 0].sum() / counts[:, 0].sum().clamp(min=1)


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor,
                    cfg: PreferenceConfig) -> torch.Tensor:
    """Per-pair loss. policy / reference / counts: [n, 2] (chosen, rejected) log-probability sums and token counts."""
    mean = policy / counts.clamp(min=1)  # per-token log-likelihood
    if cfg.loss == "simpo":
        return -F.logsigmoid(cfg.beta * (mean[:, 0] - mean[:, 1]) - cfg.simpo_gamma)
    if cfg.loss == "orpo":  # log odds of a reply: log p - log(1 - p), p its per-token likelihood
        log_odds = mean - torch.log1p(-torch.exp(mean.clamp(max=-1e-6)))
        return -mean[:, 0] - cfg.beta * F.logsigmoid(log_odds[:, 0] - log_odds[:, 1])
    ratio = policy - reference
    if cfg.loss == "ipo":  # IPO regresses the length-normalized log-ratio gap onto 1 / (2 beta)
        h = (ratio / counts.clamp(min=1))
        return (h[:, 0] - h[:, 1] - 1 / (2 * cfg.beta)) ** 2
    z = cfg.beta * (ratio[:, 0] - ratio[:, 1])
    if cfg.loss == "hinge":
        return torch.relu(1 - z)
    eps = cfg.label_smoothing
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def objective(policy: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor,
              cfg: PreferenceConfig) -> torch.Tensor:
    """The training loss of a batch: mean preference loss, plus sft_weight × the chosen replies' token loss."""
    loss = preference_loss(policy, reference, counts, cfg).mean()
    if cfg.sft_weight:
        loss = loss + cfg.sft_weight * chosen_token_loss(policy, counts)
    return loss


def preference_metrics(policy: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor,
                       cfg: PreferenceConfig) -> dict:
    """Over a split's pairs: the training objective (loss) and its preference part; the implicit rewards of both
    replies, beta * (log pi - log pi_ref) (reference-free losses: beta * per-token log pi), their margin and how
    often the chosen one's is higher (reward_accuracy, ties count as misses); how often the model gives the chosen
    reply the higher per-token log-likelihood (logp_accuracy); the chosen replies' token loss."""
    policy, reference, counts = policy.double(), reference.double(), counts.double()
    per_token = policy / counts.clamp(min=1)
    rewards = cfg.beta * (per_token if cfg.loss in REFERENCE_FREE else policy - reference)
    chosen_loss = float(chosen_token_loss(policy, counts))
    pref = float(preference_loss(policy, reference, counts, cfg).mean())
    return {"loss": pref + cfg.sft_weight * chosen_loss, "preference_loss": pref,
            "reward_accuracy": float((rewards[:, 0] > rewards[:, 1]).double().mean()),
            "reward_margin": float((rewards[:, 0] - rewards[:, 1]).mean()),
            "chosen_reward": float(rewards[:, 0].mean()), "rejected_reward": float(rewards[:, 1].mean()),
            "logp_accuracy": float((per_token[:, 0] > per_token[:, 1]).double().mean()),
            "chosen_loss": chosen_loss, "chosen_perplexity": math.exp(min(chosen_loss, 50.0)),
            "pairs": int(policy.shape[0])}


@torch.no_grad()
def split_logps(model: nn.Module, batches, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 2] log-probability sums and token counts of every pair of a split, in pair order."""
    was = model.training
    model.eval()
    logps, counts = torch.zeros(n, 2, dtype=torch.float64), torch.zeros(n, 2, dtype=torch.long)
    for batch in batches:
        lp, c = pair_logps(model, {**batch, "x": batch["x"].to(device), "y": batch["y"].to(device)})
        logps[batch["index"]] = lp.double().cpu()
        counts[batch["index"]] = c.cpu()
    model.train(was)
    return logps, counts


def disable_dropout(model: nn.Module) -> None:
    """The policy's log-probabilities are compared with the reference's, computed without dropout: train without
    it too (as TRL does by default)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
