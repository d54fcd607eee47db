"""Training, beside the stack: drafting heads (data from installed packages labelled by the target,
training loops, head files; ``paradec train-drafter``), the demo diffusion LM (``dllm.py``) and a
diffusion LM's learned commit filter (``commit_filter.py``)."""
