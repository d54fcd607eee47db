"""Several sequences at once: a batch that steps them in one forward each step (continuous batching),
and what runs on it: n samples of a prompt, First Finish Search, parallel extraction, reasoning branches."""
