"""Optimizers and learning-rate schedules from an `optimizer` config block."""
import ml_collections
import optax


def schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Peak lr `opt.lr`, optional linear warmup from `warmup_start_frac`, then the named decay.

  'cosine' decays to `final_lr_frac * lr` at `total_steps` (paper SFT/RM: 10%, no warmup);
  'constant' holds the peak (paper PPO: constant after a 10-iteration warmup from 0.1x).
  """
  warmup = int(opt.warmup_steps)
  if opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(opt.lr, max(total_steps - warmup, 1), alpha=opt.final_lr_frac)
  elif opt.schedule == 'constant':
    decay = optax.constant_schedule(opt.lr)
  else:
    raise ValueError(f'optimizer.schedule {opt.schedule!r} unknown (cosine, constant)')
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(opt.lr * opt.warmup_start_frac, opt.lr, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping then Adam(W) with the config's betas and eps."""
  parts = []
  if opt.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip))
  parts.append(optax.adamw(schedule(opt, total_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay))
  return optax.chain(*parts)
