"""Export a fine-tuned model to ONNX Runtime GenAI and prove it: parity, agreement, size and speed.

- `builder`: what the model builder supports, the staged Hugging Face folder it reads, the build.
- `parity`: greedy tokens and teacher-forced logits of PyTorch against ONNX Runtime (GenAI).
- `report`: export_report.json / export_report.md and the pass/fail verdict.
- `registration`: the `<name>-onnx` model in the local MLflow registry or in Azure ML.
"""
