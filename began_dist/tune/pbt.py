"""Population-based training that leaves a trial's last result alone.

Tune's PBT may exploit at any perturbation step, the trial's final one included. An
exploit there copies the donor's finished checkpoint into a trial with no steps left:
the trial trains nothing under its new config and its row in the results repeats the
donor's. So the final result only counts for ranking; exploits happen before it.
"""

from __future__ import annotations

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler


class FinalStepPBT(PopulationBasedTraining):
    def __init__(self, final_step: int, **settings):
        super().__init__(**settings)
        self.final_step = final_step

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self.final_step:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
