"""The training layer: one loop for every trained artefact (loop.py), the losses they share
(losses.py), a pair's encoded training data and the assistant's cached slot states (pair_data.py),
and what a method's training receives (context.py). The method modules supply what differs."""
