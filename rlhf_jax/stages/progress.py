"""Where a pipeline run stands: "stage k of n" and an overall ETA, printed as each stage starts.

The stages a command will run are planned before the first one starts (`stages.plan`); a stage
found stale on the way is added when it starts. The overall ETA weighs the stages still to run
by how long the main job's stages took when measured (MAIN_JOB_SECONDS), scaled by how fast
this machine ran the stages of this command so far; it is shown only for the geometry of that
measurement, and only once a stage has finished (before that nothing says how fast this machine
is).
"""
import dataclasses

from rlhf_jax import metrics

# Seconds each stage of the main job took: seed 0 at geometry MAIN_JOB_GEOMETRY (the reward
# model at tiny-rm), 2026-12-01, on the 2-core machine shared with other jobs (load 4-12; the
# README's 104 minutes). Only the ratios matter. PPO without ptx is taken to cost what PPO-ptx
# did (not measured).
MAIN_JOB_GEOMETRY = 'tiny'
MAIN_JOB_SECONDS = {
    'world': 8.4, 'pretrain': 944.3, 'sft': 433.4, 'sft_init': 76.2, 'sample': 130.6,
    'label': 1.3, 'pretrain_rm': 1438.0, 'sft_rm': 535.6, 'rm': 1429.6, 'ppo_ptx': 1183.1,
    'ppo': 1183.1, 'eval': 61.9,
}


@dataclasses.dataclass
class Pipeline:
  """The stages one command runs, counted as they start and timed as they finish.

  Attributes:
    planned: stage names in the order they are expected to run (`stages.plan`).
    geometry: the pipeline's geometry; the ETA is shown for MAIN_JOB_GEOMETRY only.
  """
  planned: list[str]
  geometry: str
  started: list[str] = dataclasses.field(default_factory=list)
  finished: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> seconds

  def start(self, stage: str) -> str:
    """Counts `stage` as started; returns 'stage k of n' and, when known, the overall ETA."""
    if stage not in self.planned[len(self.started):]:  # found stale on the way
      self.planned.insert(len(self.started), stage)
    self.started.append(stage)
    text = f'stage {len(self.started)} of {len(self.planned)}'
    eta = self.eta()
    return text if eta is None else f'{text}, pipeline ETA {metrics.duration(eta)}'

  def finish(self, stage: str, seconds: float) -> None:
    self.finished[stage] = seconds

  def eta(self) -> float | None:
    """Seconds until the planned stages are done (the running one included), or None."""
    if self.geometry != MAIN_JOB_GEOMETRY or not self.finished:
      return None
    expected_done = sum(MAIN_JOB_SECONDS.get(s, 0.0) for s in self.finished)
    if not expected_done:
      return None
    speed = sum(self.finished.values()) / expected_done  # this machine's seconds per measured one
    running = self.started[-1:] if self.started and self.started[-1] not in self.finished else []
    left = running + self.planned[len(self.started):]
    return speed * sum(MAIN_JOB_SECONDS.get(s, 0.0) for s in left)
