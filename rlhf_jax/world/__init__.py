"""InstructGPT-mini: a synthetic world where what the user wants is known exactly.

language     lexicon, knowledge base, word helpers
tasks        the task families (open_tasks, closed_tasks on task_base): sample, parse,
             demonstrate, judge
corrupt      flawed responses of varied quality
labelers     simulated labelers: rankings with ties, Likert, metadata, agreement
corpus       pretraining text and the few-shot format
prompts      prompt splits by customer, demonstrations
public_evals held-out text and zero-shot multiple-choice tasks
build        build_world(seed, scale) -> World, card(world)
"""
