"""Decoder models: GPT-3 / Llama / NeoX flavours, LM and scalar heads, KV-cache decoding."""
from rlhf_jax.models.config import ModelConfig
