"""Training drafters: data from installed packages labelled by the target, training loops, head files
(``paradec train-drafter``)."""
