"""PPO validation and the best-of-n check, on the world's PPO validation prompts.

Every choice made from results (which PPO iteration to keep, gamma, beta) is made here: on the
validation prompts, judged by the *training* labelers (the paper picked PPO checkpoints by
validation Likert, App. E.9) and by the reward model. The test prompts and the held-out labelers
only report (the eval stage).

Policies are compared on common random numbers: every policy answers the same prompts with the
same sampling key, and each prompt is judged by the same training labeler.

    vset = validation_set(config, tok)
    rollout = Rollout(config, tok, policy_model, reward_model, frozen, mesh)
    baseline = rollout(sft_params, vset, key).texts
    metrics = judge(vset, rollout(ema_params, vset, key), baseline)  # valid/likert, ...
"""
import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from rlhf_jax import evaluation, experience, rm, sampling, sharding
from rlhf_jax.data import records
from rlhf_jax.models import ModelConfig, ScalarModel
from rlhf_jax.stages import common
from rlhf_jax.stages import eval as eval_stage
from rlhf_jax.world import build, labelers


@dataclasses.dataclass(frozen=True)
class ValidationSet:
  """The validation prompts a policy answers, and who judges each.

  Attributes:
    prompts: [N] prompt texts (those that fit `data.prompt_len`, first `valid_prompts`).
    categories: [N] their task families.
    tokens, mask: [N, P] bos + prompt, left-padded.
    judges: [N] one training labeler per prompt.
    pool: the whole training pool, whose noise-free mean utility is the gold score.
  """
  prompts: list[str]
  categories: list[str]
  tokens: np.ndarray
  mask: np.ndarray
  judges: list[labelers.Labeler]
  pool: list[labelers.Labeler]

  def gold(self, texts: list[str]) -> np.ndarray:
    """[N] the gold score of one response per prompt (`labelers.gold_utility`)."""
    return np.array([labelers.gold_utility(self.pool, p, t) for p, t in zip(self.prompts, texts)])


def validation_set(config: ml_collections.ConfigDict, tok) -> ValidationSet:
  """The first `config.valid_prompts` PPO validation prompts that fit, with training judges.

  The judges come from the world's training pool (the card's seed and size), drawn one per
  prompt by the run's seed, as the eval stage draws held-out judges for the test prompts.
  """
  paths = common.data_paths(config)
  prompt_len = config.data.prompt_len
  fits = [r for r in records.read_records(paths['prompts_ppo_valid'], 'prompts')
          if len(tok.encode(r['prompt'])) + 1 <= prompt_len]
  chosen = fits[:config.valid_prompts]
  if not chosen:
    raise records.RecordError('file', f'no PPO validation prompt fits prompt_len={prompt_len}',
                              paths['prompts_ppo_valid'])
  tokens, mask = eval_stage.left_pad([[tok.bos_id] + tok.encode(r['prompt']) for r in chosen],
                                     prompt_len, tok.pad_id)
  card = json.loads(paths['card'].read_text())
  pool = build.labeler_pool(card['seed'], 'train', card['labelers']['train'])
  return ValidationSet(prompts=[r['prompt'] for r in chosen],
                       categories=[r['category'] for r in chosen], tokens=tokens, mask=mask,
                       judges=evaluation.assign_labelers(pool, len(chosen), config.seed),
                       pool=pool)


@dataclasses.dataclass(frozen=True)
class Responses:
  """One policy's answers to a ValidationSet.

  Attributes:
    texts: [N] decoded responses (EOS and after dropped).
    scores: [N] reward-model scores (bias subtracted).
    kl: [N] sampled log pi(y|x) - log pi_ref(y|x) over each response's tokens.
  """
  texts: list[str]
  scores: np.ndarray
  kl: np.ndarray


@functools.partial(jax.jit, static_argnames=('policy_model', 'reward_model', 'response_len',
                                             'temperature', 'eos_id', 'pad_id'))
def _rollout_batch(params, ref_params, rm_params, bias, tokens, mask, key, *,
                   policy_model: ModelConfig, reward_model: ModelConfig, response_len: int,
                   temperature: float, eos_id: int, pad_id: int):
  """[B, P] prompts -> response tokens and mask [B, N], RM scores [B], sampled KL [B]."""
  out = sampling.sample(params, policy_model, tokens, mask, key, max_new_tokens=response_len,
                        temperature=temperature, eos_id=eos_id, pad_id=pad_id)
  seq = jnp.concatenate([tokens, out.tokens], axis=1)
  seq_mask = jnp.concatenate([mask, out.mask], axis=1)
  ref_logprobs, _ = experience.response_logprobs(ref_params, policy_model, seq, seq_mask,
                                                 tokens.shape[1], temperature)
  kl = jnp.sum(jnp.where(out.mask, out.logprobs - ref_logprobs, 0.0), axis=-1)
  scores = rm.reward_scores(rm_params, seq, seq_mask, model=ScalarModel(reward_model), bias=bias)
  return out.tokens, out.mask, scores, kl


@dataclasses.dataclass(frozen=True)
class Rollout:
  """Samples, scores and measures the KL of a policy's answers to a ValidationSet.

  Batches hold `batch_size` prompts (the last is padded with the final prompt: one compiled
  shape); responses are `data.response_len` tokens at `temperature`. The frozen models (the KL
  reference, the RM and its bias) are bound once.
  """
  config: ml_collections.ConfigDict
  tok: object
  policy_model: ModelConfig
  reward_model: ModelConfig
  frozen: experience.Frozen
  mesh: jax.sharding.Mesh

  def __call__(self, params, vset: ValidationSet, key: jax.Array) -> Responses:
    rows = sharding.batch_sharding(self.mesh)
    batch_size, n = self.config.batch_size, len(vset.prompts)
    texts, scores, kls = [], [], []
    for b, start in enumerate(range(0, n, batch_size)):
      idx = np.minimum(np.arange(start, start + batch_size), n - 1)
      out = _rollout_batch(
          params, self.frozen.reference_params, self.frozen.reward_params,
          self.frozen.reward_bias, jax.device_put(vset.tokens[idx], rows),
          jax.device_put(vset.mask[idx], rows), jax.random.fold_in(key, b),
          policy_model=self.policy_model, reward_model=self.reward_model,
          response_len=self.config.data.response_len, temperature=self.config.temperature,
          eos_id=self.tok.eos_id, pad_id=self.tok.pad_id)
      real = min(batch_size, n - start)
      tokens, mask, score, kl = (np.asarray(x)[:real] for x in
                                 (multihost_utils.process_allgather(x, tiled=True) for x in out))
      texts += [self.tok.decode(t[m].tolist()) for t, m in zip(tokens, mask)]
      scores.append(score)
      kls.append(kl)
    return Responses(texts, np.concatenate(scores), np.concatenate(kls))


def judge(vset: ValidationSet, responses: Responses, baseline: list[str],
          prefix: str = 'valid') -> dict[str, float]:
  """Validation metrics of one policy's responses against the baseline's (SFT's) responses.

  Returns:
    {prefix/likert, /win_rate_vs_sft, /rm_score, /gold, /kl, /fails_instruction,
    /constraint_satisfied}: training labelers' mean Likert (App. E.9's selection metric) and
    win rate (a tie counts half), the mean RM score, the mean gold score (what the RM
    approximates; reported, never selected on) and the sampled KL to the reference.
  """
  judged = evaluation.judge_responses(vset.judges, vset.prompts, responses.texts, baseline)
  rates = evaluation.metadata_rates(judged['metadata'], vset.categories)
  return {f'{prefix}/likert': float(np.mean(judged['likerts'])),
          f'{prefix}/win_rate_vs_sft': float(np.mean(judged['outcomes'])),
          f'{prefix}/rm_score': float(np.mean(responses.scores)),
          f'{prefix}/gold': float(np.mean(vset.gold(responses.texts))),
          f'{prefix}/kl': float(np.mean(responses.kl)),
          f'{prefix}/fails_instruction': rates['fails_instruction_rate'],
          f'{prefix}/constraint_satisfied': rates['constraint_satisfied_rate'] or 0.0}


def best_of_n_kl(n: int) -> float:
  """KL(best-of-n || sampling policy) in nats: log n - (n - 1) / n (Stiennon et al. 2020)."""
  return math.log(n) - (n - 1) / n


def best_of_n(samples: list[Responses], vset: ValidationSet, baseline: list[str],
              pick_by: str = 'rm') -> dict[str, dict[str, float]]:
  """The best-of-n check: for n = 1, 2, 4, ... up to the number of samples, the favourite
  among the first n samples of each prompt, judged like a policy against the baseline.

  Args:
    samples: n_max independent Responses of the same policy to `vset`.
    vset: the validation prompts and their judges.
    baseline: [N] the baseline's responses (another, independent sample of SFT).
    pick_by: 'rm' (the reward model's favourite: what PPO can hope for) or 'gold' (the gold
      score's: what a perfect reward model would allow).

  Returns:
    {str(n): {'kl': analytic KL, 'likert', 'win_rate_vs_sft', 'rm_score', 'gold', ...}}
    for each n.
  """
  scores = np.stack([s.scores for s in samples])  # [n_max, N]
  rank = scores if pick_by == 'rm' else np.stack([vset.gold(s.texts) for s in samples])
  out = {}
  for n in (2 ** k for k in range(len(samples).bit_length())):
    pick = np.argmax(rank[:n], axis=0)  # [N]
    chosen = Responses([samples[k].texts[i] for i, k in enumerate(pick)],
                       scores[pick, np.arange(scores.shape[1])], np.full(len(pick), np.nan))
    metrics = judge(vset, chosen, baseline, prefix='bon')
    out[str(n)] = {'kl': best_of_n_kl(n), **{k.split('/', 1)[1]: v for k, v in metrics.items()
                                             if not k.endswith('/kl')}}
  return out
