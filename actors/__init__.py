"""The roles an algorithm's topology is built from, one small Ray actor class per file.

    learner.LearnerWorker      one DeepSpeed data-parallel rank (full fine-tuning or LoRA)
    critic.CriticWorker        the PPO value model, trained like the learner
    reference.ReferenceWorker  a frozen copy of the starting policy (log π_ref)
    rollout.RolloutWorker      a generation engine (vLLM)

Replicas of a role are created and called through `rlcore.runtime.group.ActorGroup`.
Import the classes from their modules: this package imports none of them, so a
learner process never loads vLLM and a rollout process never loads DeepSpeed.
"""
