"""Graders in Azure OpenAI's reinforcement fine-tuning (RFT) JSON: string_check, text_similarity, python,
score_model and multi, with `{{item.*}}` / `{{sample.*}}` templates. Fine-Tune's GRPO rewards, Data Prep's
rft row checks and Evaluate's rft scores all read one file through `load_graders`."""

from maap_finetune.graders.graders import Grade, Graders, Sample, load_graders

__all__ = ["Grade", "Graders", "Sample", "load_graders"]
