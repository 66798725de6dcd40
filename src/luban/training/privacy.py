"""Differentially private training (trainer.privacy): DP-SGD with Opacus.

Each optimizer step clips every example's gradient to trainer.privacy.max_grad_norm and adds Gaussian noise of
scale noise_multiplier x max_grad_norm to their sum (Opacus's GradSampleModule computes the per-example gradients,
its DPOptimizer clips and noises). The noise multiplier is the smallest that keeps the whole run within
(epsilon, delta) under the RDP accountant for trainer.epochs epochs of steps at sampling rate 1 / batches per epoch; the
epsilon actually spent (the same accountant over the steps taken: less when early stopping ends the run sooner)
goes to metrics.json (`privacy`) and the report.

luban's batches are shuffled fixed-size batches, not Poisson samples; accounting them as Poisson sampling at the
same rate is the usual approximation (Opacus's own `poisson_sampling=False` does the same). Only the training rows
are protected: validation rows steer early stopping and the best-epoch choice (use trainer.keep: last and no early
stopping for a guarantee over every row the run reads).
"""

from __future__ import annotations

import torch

from luban.errors import ConfigError
from luban.training.step import LossStep, StepResult


def _opacus():
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise ConfigError("trainer.privacy needs opacus (not installed): pip install 'luban[trust]'") from None
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.optimizers import DPOptimizer

    return GradSampleModule, DPOptimizer, RDPAccountant, get_noise_multiplier


class PrivateLossStep(LossStep):
    """LossStep with DP-SGD: per-example clipping and noise on every optimizer step, the privacy spent accounted."""

    distributed = False  # per-example clipping across Ray workers is not implemented: refused in the config

    def __init__(self, *args, privacy, rows: int, **kw):
        super().__init__(*args, **kw)
        self.privacy, self.rows = privacy, rows

    def start(self, model, cfg, n_batches, device, precision, workdir):
        GradSampleModule, DPOptimizer, RDPAccountant, get_noise_multiplier = _opacus()
        errors = [str(e).splitlines()[0][:160] for e in GradSampleModule.validate(model, strict=False)]
        # recurrent and attention layers need Opacus's own DP replacements (DPLSTM, DPMultiheadAttention), which
        # would change the saved architecture: refused rather than swapped
        errors += sorted({f"{type(m).__name__} layers need DP-specific replacements" for m in model.modules()
                          if isinstance(m, (torch.nn.RNNBase, torch.nn.MultiheadAttention))})
        if errors:
            kinds = sorted(set(errors))
            raise ConfigError("trainer.privacy: DP-SGD (Opacus) cannot train this model: " + "; ".join(kinds[:3]) +
                              " — use a model made of embeddings, convolutions and linear layers (textcnn, "
                              "ngram_bag, mlp), or train without trainer.privacy")
        direct = [n for n, q in model.named_parameters(recurse=False) if q.requires_grad]
        if direct:
            raise ConfigError(f"trainer.privacy: DP-SGD (Opacus) cannot train a {type(model).__name__}: it keeps "
                              f"parameters outside its layers ({', '.join(direct)}), which cannot be clipped per "
                              "example; for ngram_bag set model.embedding_dim > 0, or use textcnn")
        super().start(model, cfg, n_batches, device, precision, workdir)
        p = self.privacy
        # each batch is one step: the sampling rate is one batch of the epoch's (its rows / the training rows)
        self.sample_rate = min(1.0, 1.0 / max(1, n_batches))
        self.noise = get_noise_multiplier(target_epsilon=p.epsilon, target_delta=p.delta,
                                          sample_rate=self.sample_rate, steps=cfg.epochs * n_batches,
                                          accountant="rdp")
        self.hooks = GradSampleModule(model, loss_reduction="mean", strict=False)  # hooks on `model`'s own layers
        self.optimizer = DPOptimizer(self.optimizer, noise_multiplier=self.noise, max_grad_norm=p.max_grad_norm,
                                     expected_batch_size=cfg.batch_size, loss_reduction="mean")
        self.accountant = RDPAccountant()
        self.steps = 0

    def __call__(self, model, batch, *, index, count, epoch):
        from luban.errors import TrainingDiverged

        loss = self.loss(model, batch)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss.item()} at epoch {epoch + 1}, batch {index + 1}")
        loss.backward()
        self.optimizer.step()  # clips each example's gradient, adds the noise, steps
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.accountant.step(noise_multiplier=self.noise, sample_rate=self.sample_rate)
        self.steps += 1
        return StepResult(loss.item(), batch["size"], True, {"epsilon": self.epsilon()})

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(self.privacy.delta)) if self.steps else 0.0

    def report(self) -> dict:
        """metrics.json's `privacy`."""
        p = self.privacy
        return {"epsilon_target": p.epsilon, "epsilon_spent": round(self.epsilon(), 4), "delta": p.delta,
                "max_grad_norm": p.max_grad_norm, "noise_multiplier": round(self.noise, 4),
                "sample_rate": round(self.sample_rate, 6), "steps": self.steps, "training_rows": self.rows,
                "method": "DP-SGD (Opacus: per-example clipping + Gaussian noise), RDP accountant; shuffled "
                          "batches accounted as Poisson sampling at one batch of the epoch's batches"}


def private_step(task, privacy, rows: int) -> PrivateLossStep:
    """The task's LossStep, private (Task.train_step with trainer.privacy)."""
    return PrivateLossStep(task.train_batches, task.loss, val_batches=lambda: task.loss_batches("validation"),
                           val_loss=lambda model, batch: type(task).loss(task, model, batch),
                           unit=task.throughput_unit, privacy=privacy, rows=rows)


def report_section(p: dict) -> str:
    import html

    return (f"<h2>Differential privacy</h2><p>Trained with DP-SGD: ε = {p['epsilon_spent']:.3g} spent of "
            f"{p['epsilon_target']:g} (δ = {p['delta']:g}) over {p['steps']:,} steps; per-example gradients "
            f"clipped to {p['max_grad_norm']:g}, noise multiplier {p['noise_multiplier']:.3g}, sampling rate "
            f"{p['sample_rate']:.3g} of {p['training_rows']:,} training rows.</p><p class=muted>"
            f"{html.escape(p['method'])}. Only the training rows are protected (validation rows choose the best "
            "epoch).</p>")
