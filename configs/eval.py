"""Evaluation of every trained policy on the held-out test prompts (InstructGPT 3.6, App. D).

Policies evaluated when their stage is complete: gpt (pretrain), gpt_prompted (pretrain with the
world's few-shot prefix), sft (the baseline, produced if missing), ppo, ppo_ptx.

Usage: python -m rlhf_jax.main --config=configs/eval.py --workdir=runs/mini
"""
from rlhf_jax import config_lib


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  c = config_lib.base_config(geometry)
  c.stage = 'eval'
  c.mesh = config_lib.mesh_for(geometry)
  c.data = config_lib.data_config(geometry)
  c.policies = 'gpt,gpt_prompted,sft,ppo,ppo_ptx'  # comma-separated; missing stages are skipped
  # 'NAME=FOLDER,...': more completed LM stages sampled like gpt, e.g. a larger base model
  # pretrained in another workdir (experiments/instructgpt_mini).
  c.extra_policies = ''
  # One temperature for every policy keeps the comparison paired and fair. T = 1 is the
  # distribution PPO optimises (its rollouts sample at T = 1) and how the paper shows InstructGPT
  # samples (App. F); a lower T would flatter the base models' repetitive greedy text less evenly.
  c.temperature = 1.0
  c.ppo_params = 'ema'  # 'ema' (paper C.4: the EMA policy is evaluated) or 'policy' (raw params)
  c.batch_size = 64  # prompts (or scored sequences) per forward batch
  # gpt_prompted's prompt carries the few-shot prefix: a longer left-padded window, cut on the left.
  c.few_shot_prompt_len = c.data.seq_len
  c.max_test_prompts = 0  # 0 = all test prompts
  c.public_eval_items = 0  # per task; 0 = all
  c.pretrain_eval_batches = 0  # batches of pretrain_valid text; 0 = all full batches
  c.n_labelers = 40  # size of the world's held-out pool (build_world's default)
  c.examples = 3  # prompts whose responses report.md shows for every policy
  return c
