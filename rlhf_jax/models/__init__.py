"""Decoder models: GPT-3 / Llama / NeoX flavours, LM and scalar heads, KV-cache decoding."""
from rlhf_jax.models.cache import KVCache, init_cache
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.heads import LanguageModel, ScalarModel, last_token_value

__all__ = ['KVCache', 'init_cache', 'ModelConfig', 'LanguageModel', 'ScalarModel',
           'last_token_value']
